// Which dilated convolutions the layer-graph models run by Winograd on phase planes
// (ConvPolicy.phaseWinogradTile, PhaseWinograd.swift): the geometry, the policy, and the cap on
// per-thread scratch that keeps large images on the strided kernel.

import XCTest
@testable import SegModel
import SegEngine

final class PhaseWinogradPolicyTests: XCTestCase {
    func testPhasePlanesTakeWinogradWithinTheScratchCap() {
        let policy = ConvPolicy.standard
        let layer4 = ConvGeometry(kernel: 3, stride: 1, padding: 2, dilation: 2)
        let map16 = Shape(8, 512, 16, 16)
        // DeepLabV3+(resnet50) at 256 px: layer4's 16 x 16 maps, 8 x 8 phase planes, F(2x2).
        XCTAssertEqual(policy.phaseWinogradTile(layer4, map16, map16), 2)
        // At 1024 px (64 x 64 maps) a whole image's chunk would take 29 MiB per thread: strided.
        let map64 = Shape(1, 512, 64, 64)
        XCTAssertGreaterThan(phaseWinogradScratchFloats(inChannels: 512, outChannels: 512, height: 64, width: 64,
                                                        dilation: 2, tile: 4, policy: policy).perThread,
                             phaseWinogradMaximumThreadFloats)
        XCTAssertEqual(policy.phaseWinogradTile(layer4, map64, map64), 0)
        // Not this geometry: stride 2, padding other than the dilation, sides not multiples of it.
        XCTAssertEqual(policy.phaseWinogradTile(ConvGeometry(kernel: 3, stride: 2, padding: 2, dilation: 2),
                                                Shape(1, 64, 16, 16), Shape(1, 64, 8, 8)), 0)
        XCTAssertEqual(policy.phaseWinogradTile(ConvGeometry(kernel: 3, stride: 1, padding: 1, dilation: 2),
                                                Shape(1, 64, 16, 16), Shape(1, 64, 14, 14)), 0)
        XCTAssertEqual(policy.phaseWinogradTile(layer4, Shape(1, 64, 15, 16), Shape(1, 64, 15, 16)), 0)
        // `--conv gemm`: never.
        XCTAssertEqual(ConvPolicy(algorithm: .gemm).phaseWinogradTile(layer4, map16, map16), 0)
    }
}
