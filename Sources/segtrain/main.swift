import ArgumentParser
import SegEngine

struct Segtrain: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "segtrain",
        abstract: "Data-parallel UNet segmentation training on CPU clusters.")
}

Segtrain.main()
