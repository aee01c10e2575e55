// The base of the suites that run the built segtrain binary (SEGTRAIN_BIN, else the package's
// build folder), alone and under mpirun: the binary's path, Open MPI's variables for running as
// root, and a fresh temporary folder per test, removed after it. A missing binary fails the test
// once and skips the rest of it.

import XCTest
import Foundation
import SegTestSupport

class BinaryTestCase: XCTestCase {
    static var binary: String { Segtrain.binary(testBundleOf: BinaryTestCase.self) }
    static let mpiEnvironment = ["OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"]
    /// A word in the temporary folder's name (which suite made it).
    class var folderTag: String { "run" }
    /// This test's temporary folder.
    var folder = ""

    override func setUpWithError() throws {
        guard FileManager.default.isExecutableFile(atPath: Self.binary) else {
            XCTFail("segtrain not built at \(Self.binary)")
            throw XCTSkip("no binary")
        }
        folder = NSTemporaryDirectory() + "segtrain-\(Self.folderTag)-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        if !folder.isEmpty, FileManager.default.fileExists(atPath: folder) {
            try FileManager.default.removeItem(atPath: folder)
        }
    }
}
