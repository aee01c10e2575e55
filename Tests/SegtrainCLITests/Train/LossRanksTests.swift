// The losses of issue #18 under mpirun: with class weights (whose ce denominator is summed over ranks
// as per-class pixel counts), focal, Tversky and Lovász, the first step's summed gradient on 2 and 3
// ranks equals the single process's within issue #4's bound (1e-5 per tensor, relative to its
// largest value; see DataParallelTests: only the float32 summation order differs).

import Foundation
import SegTestSupport
import XCTest

final class LossRanksTests: TemporaryFolderTestCase {
    override class var folderTag: String { "lossranks" }

    func testWeightedLossesGiveTheSingleProcessGradientOnTwoAndThreeRanks() throws {
        let losses: [[String]] = [
            ["--classes", "3", "--loss", "ce:1,focal:0.5,lovasz:0.5,tversky:0.3", "--class-weights", "0.3,2,1.2"],
            ["--classes", "1", "--loss", "bce:1,focal-tversky:0.5,lovasz:0.4", "--class-weights", "2.5"],
        ]
        for (index, loss) in losses.enumerated() {
            for ranks in [0, 2, 3] {
                // 5 images: shares 3+2 and 2+2+1.
                let arguments = ["train", "--image-size", "16", "--base-channels", "4", "--depth", "2", "--threads", "1",
                                 "--batch-size", "5", "--train-samples", "5", "--val-samples", "4", "--epochs", "1", "--seed", "3",
                                 "--dump-gradients", "\(folder)/grad\(index)-\(ranks).safetensors", "--out", "\(folder)/run\(index)-\(ranks)"] + loss
                let result = try segtrain(arguments, ranks: ranks)
                XCTAssertEqual(result.status, 0, "\(loss) ranks \(ranks): \(result.stderr)")
            }
            let single = try loadSafetensors("\(folder)/grad\(index)-0.safetensors")
            XCTAssertTrue(single.values.contains { $0.contains { $0 != 0 } }, "\(loss)")
            for ranks in [2, 3] {
                let worst = worstScaledDifference(try loadSafetensors("\(folder)/grad\(index)-\(ranks).safetensors"), single)
                print("first-step gradient, \(loss.joined(separator: " ")), \(ranks) ranks: worst scaled difference \(worst)")
                XCTAssertLessThanOrEqual(worst, 1e-5, "\(loss), \(ranks) ranks: gradient differs by \(worst)")
            }
        }
    }
}
