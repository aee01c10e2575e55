// swift-tools-version:6.1
import PackageDescription

// Dependencies point one way (docs/ARCHITECTURE.md): segtrain (CLI) -> {SegTraining, SegServe, SegDistributed};
// SegTraining -> SegInference -> {SegData, SegModel} -> SegEngine -> {CBLAS, CGemm, CWinograd, CPlaneKernels, CSupport}; SegServe -> SegInference;
// SegDistributed -> {CMPI, SegEngine}; SegExport (ONNX) -> {SegModel, SegEngine, SwiftProtobuf};
// SegTraining -> SegTensorBoard -> SwiftProtobuf. SegEngine's `Collectives` protocol is where training and MPI meet:
// SegDistributed's Communicator conforms to it, SegTraining sums through it. SegData -> {CPNG, CTurboJPEG}.
// The Swift modules that carry the numeric loops are compiled for a CPU level: on x86_64 `haswell`
// (AVX2 + FMA, x86-64-v3: Intel since 2013, AMD since 2015), so LLVM vectorizes the Winograd
// transforms and elementwise ops 8 floats wide. A binary built so refuses, with one line, to start
// on a CPU without AVX2/FMA (CSupport checks before main). SEGTRAIN_TARGET_CPU=x86-64 swift build
// makes a portable build (SSE2 only, slower); any other LLVM CPU name (znver4, native, ...) works too.
let targetCPU: String? = {
    if let chosen = Context.environment["SEGTRAIN_TARGET_CPU"], !chosen.isEmpty { return chosen }
    #if arch(x86_64)
    return "haswell"
    #else
    return nil
    #endif
}()
let numericFlags: [String] = ["-O"] + (targetCPU.map { ["-target-cpu", $0] } ?? [])
// CSupport's start-up check for the default level (a CPU named by hand is the builder's choice).
let needsAVX2 = targetCPU == "haswell"

let package = Package(
    name: "segtrain",
    platforms: [.macOS(.v13)],
    products: [
        .executable(name: "segtrain", targets: ["segtrain"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        // segtrain serve's HTTP server (SegServe). No default traits: swift-configuration is not needed.
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.0.0", traits: []),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.0"),
        .package(url: "https://github.com/apple/swift-nio-extras", from: "1.30.0"),
        .package(url: "https://github.com/apple/swift-http-types", from: "1.0.0"),
        // ONNX models and TensorBoard event files are protobuf messages (code generated once, committed).
        .package(url: "https://github.com/apple/swift-protobuf", from: "1.30.0"),
    ],
    targets: [
        .systemLibrary(
            name: "CBLAS",
            pkgConfig: "openblas",
            providers: [.apt(["libopenblas-dev"])]
        ),
        .systemLibrary(
            name: "CMPI",
            pkgConfig: "ompi-c",
            providers: [.apt(["libopenmpi-dev"])]
        ),
        .systemLibrary(
            name: "CPNG",
            pkgConfig: "libpng",
            providers: [.apt(["libpng-dev"])]
        ),
        .systemLibrary(
            name: "CTurboJPEG",
            pkgConfig: "libturbojpeg",
            providers: [.apt(["libturbojpeg0-dev"])]
        ),
        .target(
            name: "CSupport",
            cSettings: needsAVX2 ? [.define("SEGTRAIN_REQUIRE_AVX2", to: "1")] : []
        ),
        // segtrain's own AVX-512 sgemm (SegEngine's Gemm.swift decides when it runs). Optimised in
        // debug builds too, as the Swift numeric modules are: the tests run it on every product.
        .target(name: "CGemm", cSettings: [.unsafeFlags(["-O2"])]),
        // AVX-512 versions of Winograd transforms (Winograd.swift keeps the portable reference).
        .target(name: "CWinograd", cSettings: [.unsafeFlags(["-O2", "-ffp-contract=off"])]),
        // AVX-512 versions of per-plane ops without GEMM: depthwise 3x3 (Depthwise.swift keeps the reference).
        .target(name: "CPlaneKernels", cSettings: [.unsafeFlags(["-O2", "-ffp-contract=off"])]),
        .target(
            name: "SegEngine",
            dependencies: ["CBLAS", "CSupport", "CGemm", "CWinograd", "CPlaneKernels"],
            swiftSettings: [.unsafeFlags(numericFlags)]
        ),
        .target(
            name: "SegModel",
            dependencies: ["SegEngine", "CSupport"],
            swiftSettings: [.unsafeFlags(numericFlags)]
        ),
        .target(
            name: "SegInference",
            dependencies: ["SegModel", "SegData", "SegEngine"],
            swiftSettings: [.unsafeFlags(numericFlags)]
        ),
        // TensorBoard event files (--tensorboard): the messages (generated from event.proto, committed),
        // the record framing with its CRC-32C, the writer.
        .target(
            name: "SegTensorBoard",
            dependencies: [.product(name: "SwiftProtobuf", package: "swift-protobuf")],
            exclude: ["event.proto"]
        ),
        .target(
            name: "SegTraining",
            dependencies: ["SegInference", "SegModel", "SegData", "SegEngine", "SegTensorBoard", "CSupport"],
            swiftSettings: [.unsafeFlags(numericFlags)]
        ),
        .target(
            name: "SegDistributed",
            dependencies: ["CMPI", "SegEngine", "CSupport"]
        ),
        .target(
            name: "SegData",
            dependencies: ["CPNG", "CTurboJPEG", "SegEngine"],
            swiftSettings: [.unsafeFlags(numericFlags)]
        ),
        .target(
            name: "SegServe",
            dependencies: [
                "SegInference", "SegData", "SegEngine",
                .product(name: "HummingbirdCore", package: "hummingbird"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOHTTPTypes", package: "swift-nio-extras"),
                .product(name: "NIOHTTPTypesHTTP1", package: "swift-nio-extras"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
            ]
        ),
        // `segtrain export`: a model as an ONNX file. onnx.pb.swift is generated once and committed
        // (the command is in its header); the protoc plugin never runs in the build.
        .target(
            name: "SegExport",
            dependencies: ["SegModel", "SegEngine", .product(name: "SwiftProtobuf", package: "swift-protobuf")]
        ),
        .executableTarget(
            name: "segtrain",
            dependencies: [
                "SegTraining", "SegInference", "SegModel", "SegEngine", "SegDistributed", "SegData", "SegServe", "SegExport",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        // Exact (float64) references and the float32 rounding model behind the numeric tolerances; for tests only.
        .target(name: "SegEngineTestSupport", dependencies: ["SegEngine"], swiftSettings: [.unsafeFlags(["-O"])]),
        .testTarget(name: "SegEngineTests", dependencies: ["SegEngine", "SegEngineTestSupport"]),
        // One test target per module, in process; SegtrainCLITests runs the built binary (docs/ARCHITECTURE.md, "Tests").
        .testTarget(name: "SegModelTests", dependencies: ["SegModel", "SegEngine", "SegEngineTestSupport"]),
        .testTarget(name: "SegDataTests", dependencies: ["SegData", "SegEngine", "CPNG", "CTurboJPEG"]),
        .testTarget(name: "SegDistributedTests", dependencies: ["SegDistributed", "SegEngine"]),
        .testTarget(name: "SegInferenceTests", dependencies: ["SegInference", "SegModel", "SegData", "SegEngine", "SegEngineTestSupport"]),
        .testTarget(name: "SegTrainingTests", dependencies: ["SegTraining", "SegInference", "SegModel", "SegEngine", "SegData"]),
        .testTarget(name: "SegTensorBoardTests", dependencies: ["SegTensorBoard"]),
        .testTarget(name: "SegServeTests", dependencies: ["SegServe", .product(name: "HTTPTypes", package: "swift-http-types")]),
        // Runs the built binary as a subprocess with a time limit; for test targets only.
        .target(name: "SegTestSupport"),
        // Every segtrain command run as a user would: the built binary, alone and under mpirun.
        .testTarget(name: "SegtrainCLITests", dependencies: ["SegTestSupport", "SegData"]),
    ],
    swiftLanguageModes: [.v5]
)
