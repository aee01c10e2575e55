// The memory estimate made from a configuration alone (what `segtrain train` refuses runs with)
// against what UNet.init and UNet.plan really allocate: never below it, and not far above.

import XCTest
import SegEngine
import SegModel

final class MemoryEstimateTests: XCTestCase {
    func testEstimateBoundsWhatThePlanAllocates() {
        var configs: [(UNetConfig, Int, Int)] = []
        for (base, depth, norm, up, classes, size, batch) in [
            (4, 2, NormLayer.none, Upsampling.bilinear, 1, 32, 4), (8, 3, .batch, .transpose, 3, 64, 2),
            (16, 4, .none, .bilinear, 1, 48, 3), (8, 3, .none, .bilinear, 2, 37, 5), (32, 4, .batch, .bilinear, 1, 128, 2),
            (6, 3, .group, .transpose, 2, 40, 3), (24, 3, .group, .bilinear, 1, 64, 2),
            (4, 5, .batch, .bilinear, 1, 64, 1), (16, 2, .none, .transpose, 4, 24, 6), (12, 4, .group, .bilinear, 2, 96, 1),
            (3, 1, .none, .bilinear, 1, 16, 2),
        ] {
            var c = UNetConfig()
            c.baseChannels = base; c.depth = depth; c.norm = norm; c.upsampling = up; c.classes = classes
            configs.append((c, size, batch))
        }
        for (config, size, batch) in configs {
            let unet = UNet(config, pool: WorkerPool(threads: 2))
            let counts = config.estimatedParameterCounts
            XCTAssertEqual(Int(counts.parameters), unet.parameterCount, "\(config)")
            XCTAssertEqual(Int(counts.buffers), unet.store.buffers.count, "\(config)")
            unet.plan(batch: batch, height: size, width: size)
            let planned = Double(unet.plannedActivationBytes)
            let estimate = config.estimatedActivationBytes(batch: batch, imageSize: size, threads: 2)
            XCTAssertGreaterThanOrEqual(estimate, planned, "base \(config.baseChannels) depth \(config.depth) size \(size)")
            // Not far above: the plan's placement packs some sizes better than the estimate's
            // largest-concatenation rule assumes (1.05-1.35x over these configurations).
            XCTAssertLessThanOrEqual(estimate, 1.4 * planned, "base \(config.baseChannels) depth \(config.depth) size \(size)")
        }
    }
}
