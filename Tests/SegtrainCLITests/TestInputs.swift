// Inputs shared by the predict and serve suites.

import Foundation
import SegData
import SegTestSupport
import XCTest

extension SegtrainTestCase {
    /// Test images of several sizes and formats in `folder/images`: two JPEG 50x50 from `segtrain synth`
    /// (seed 9), a gray PNG 37x29 and an RGBA PNG 20x45. Returns the images folder.
    func writeMixedInputs(to folder: String) throws -> String {
        let r = try segtrain(["synth", "--out", folder, "--count", "2", "--size", "50", "--format", "jpg", "--seed", "9"])
        XCTAssertEqual(r.status, 0, r.stderr)
        var gray = Image8(width: 37, height: 29, channels: 1)
        for i in gray.pixels.indices { gray.pixels[i] = UInt8(truncatingIfNeeded: i * 13) }
        try ImageFile.write(gray, to: folder + "/images/gray.png")
        var rgba = Image8(width: 20, height: 45, channels: 4)
        for i in rgba.pixels.indices { rgba.pixels[i] = UInt8(truncatingIfNeeded: i * 7) }
        try ImageFile.write(rgba, to: folder + "/images/rgba.png")
        return folder + "/images"
    }
}
