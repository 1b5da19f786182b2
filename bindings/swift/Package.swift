// swift-tools-version:5.9
// The NWS Swift package: the generated Swift bindings (Sources/Nws, module `Nws`) over the
// native library in a binary XCFramework (module `NwsFFI`). Build the XCFramework on macOS
// first with `bindings/swift/build-xcframework.sh`; see docs/MOBILE.md.
import PackageDescription

let package = Package(
    name: "Nws",
    platforms: [.iOS(.v15), .macOS(.v12)],
    products: [
        .library(name: "Nws", targets: ["Nws"]),
    ],
    targets: [
        // libnws.a and its C header + module map (NwsFFI), for iOS devices, the iOS
        // simulator and macOS.
        .binaryTarget(name: "NwsFFI", path: "NwsFFI.xcframework"),
        .target(
            name: "Nws",
            dependencies: ["NwsFFI"],
            path: "Sources/Nws"
        ),
    ]
)
