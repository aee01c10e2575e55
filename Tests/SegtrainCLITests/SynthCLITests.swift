import Foundation
import SegData
import SegTestSupport
import XCTest

/// `segtrain synth` run as a user would (the built binary).
final class SynthCLITests: TemporaryFolderTestCase {
    override class var folderTag: String { "synth" }

    func testWritesReadablePairsEqualToTheGenerator() throws {
        for classes in [1, 3] {
            let out = folder + "/set\(classes)/nested"
            let r = try segtrain(["synth", "--out", out, "--count", "4", "--size", "40", "--classes", "\(classes)", "--seed", "5"])
            XCTAssertEqual(r.status, 0, r.stderr)
            XCTAssertTrue(r.stdout.contains("wrote 4 samples"), r.stdout)
            let generator = SyntheticGenerator(size: 40, classes: classes, seed: 5)
            for index in 0..<4 {
                let name = String(format: "%05d.png", index)
                let image = try ImageFile.read(out + "/images/" + name, as: .rgb)
                let raw = try ImageFile.readMask(out + "/masks/" + name)
                let mask = try ImageFile.readClassMask(out + "/masks/" + name, classes: classes)
                XCTAssertEqual([image.width, image.height, raw.width, raw.height], [40, 40, 40, 40])
                let expected = generator.sample(index)
                XCTAssertEqual(image, expected.image)
                XCTAssertEqual(mask, expected.mask)
                if classes == 1 { XCTAssertTrue(Set(raw.pixels).isSubset(of: [0, 255]), "binary masks are stored 0/255") }
            }
            let files = try FileManager.default.contentsOfDirectory(atPath: out + "/images")
            XCTAssertEqual(files.sorted(), (0..<4).map { String(format: "%05d.png", $0) })
        }
    }

    func testBadFlagsGiveOneLineNamingTheFlag() throws {
        let blocker = folder + "/a-file"
        FileManager.default.createFile(atPath: blocker, contents: Data([1]))
        let cases: [([String], String)] = [
            (["--count", "0"], "--count"),
            (["--count", "2", "--size", "7"], "--size"),
            (["--count", "2", "--size", "5000"], "--size"),
            (["--count", "2", "--classes", "0"], "--classes"),
            (["--count", "2", "--classes", "256"], "--classes"),
            (["--count", "x"], "--count"),
        ]
        for (arguments, flag) in cases {
            let r = try segtrain(["synth", "--out", folder + "/bad"] + arguments)
            XCTAssertNotEqual(r.status, 0, "\(arguments)")
            XCTAssertEqual(r.stderr.split(separator: "\n").count, 1, "\(arguments): \(r.stderr)")
            XCTAssertTrue(r.stderr.contains(flag), "\(arguments): \(r.stderr)")
        }
        let r = try segtrain(["synth", "--out", blocker + "/sub", "--count", "1"])
        XCTAssertNotEqual(r.status, 0)
        XCTAssertEqual(r.stderr.split(separator: "\n").count, 1, r.stderr)
        XCTAssertTrue(r.stderr.contains("--out") && r.stderr.contains("a-file is not a directory"), r.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: folder + "/bad"), "nothing written on bad flags")
    }
}
