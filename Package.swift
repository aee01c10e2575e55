// swift-tools-version:6.0
import PackageDescription

// Dependencies point one way: segtrain (CLI) -> SegTraining -> SegModel -> SegEngine -> {CBLAS, CSupport};
// segtrain -> SegDistributed -> {CMPI, SegEngine}.
// segtrain -> SegData (PNG and JPEG files, synthetic data) -> {SegEngine, CPNG (libpng), CTurboJPEG (libjpeg-turbo)}.
let package = Package(
    name: "segtrain",
    platforms: [.macOS(.v13)],
    products: [
        .executable(name: "segtrain", targets: ["segtrain"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/swhitty/FlyingFox", exact: "0.27.1"),  // segtrain serve's HTTP server
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
        .target(name: "CSupport"),
        .target(
            name: "SegEngine",
            dependencies: ["CBLAS", "CSupport"],
            swiftSettings: [.unsafeFlags(["-O"])]
        ),
        .target(
            name: "SegModel",
            dependencies: ["SegEngine"],
            swiftSettings: [.unsafeFlags(["-O"])]
        ),
        .target(
            name: "SegTraining",
            dependencies: ["SegModel", "SegEngine", "SegData", "CSupport"],  // training data arrives through SampleSource
            swiftSettings: [.unsafeFlags(["-O"])]
        ),
        .target(
            name: "SegDistributed",
            dependencies: ["CMPI", "SegEngine"]
        ),
        .target(
            name: "SegData",
            dependencies: ["CPNG", "CTurboJPEG", "SegEngine"],
            swiftSettings: [.unsafeFlags(["-O"])]
        ),
        .executableTarget(
            name: "segtrain",
            dependencies: [
                "SegTraining", "SegModel", "SegEngine", "SegDistributed", "SegData",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "FlyingFox", package: "FlyingFox"),
            ]
        ),
        .testTarget(name: "SegEngineTests", dependencies: ["SegEngine"]),
        .testTarget(name: "SegModelTests", dependencies: ["SegModel", "SegEngine"]),
        .testTarget(name: "SegTrainingTests", dependencies: ["SegTraining", "SegModel", "SegEngine", "SegData"]),
        // Runs the built binary as a subprocess with a time limit; for test targets only.
        .target(name: "SegTestSupport"),
        .testTarget(name: "SegtrainCLITests", dependencies: ["SegTestSupport", "SegData"]),
        // Runs the built segtrain binary (mpi-check) alone and under mpirun.
        .testTarget(name: "SegDistributedTests", dependencies: ["SegTestSupport"]),
        .testTarget(name: "SegDataTests", dependencies: ["SegData", "SegEngine", "CPNG", "CTurboJPEG", "SegTestSupport"]),
    ],
    swiftLanguageModes: [.v5]
)
