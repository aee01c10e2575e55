import SegData
import SegEngine
import SegModel
import SegTraining

/// The seeds' display callback: for a few fixed validation images, one row of
/// image | truth | prediction, written as OUT/samples/epoch-NNN.png by rank 0.
final class SampleGrid {
    let source: SampleSource
    let indices: [Int]
    let images: OwnedTensor
    let masks: OwnedTensor
    let batch: Int

    /// `batch`: the model's planned batch (forward runs in chunks of it, padded).
    init(source: SampleSource, count: Int, imageSize: Int, inChannels: Int, batch: Int) {
        self.source = source
        indices = Array(0..<min(count, source.count))
        self.batch = batch
        images = OwnedTensor(Shape(batch, inChannels, imageSize, imageSize))
        masks = OwnedTensor(Shape(batch, 1, imageSize, imageSize))
    }

    /// Class k's colour: black background, then distinct bright colours; a value that is no
    /// class (the ignore index) mid grey.
    static func colour(_ k: Int, classes: Int) -> (UInt8, UInt8, UInt8) {
        if k == 0 { return (0, 0, 0) }
        if k >= max(classes, 2) { return (128, 128, 128) }
        if classes <= 2 { return (255, 255, 255) }
        let palette: [(UInt8, UInt8, UInt8)] = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200),
                                                (245, 130, 48), (145, 30, 180), (70, 240, 240), (240, 50, 230)]
        return palette[(k - 1) % palette.count]
    }

    func write(model: UNet, to path: String) throws {
        let size = images.shape.h, classes = model.config.classes
        var grid = Image8(width: 3 * size, height: indices.count * size, channels: 3)
        var start = 0
        while start < indices.count {
            let real = min(batch, indices.count - start)
            try source.fill(images: images.tensor, masks: masks.tensor,
                            indices: (0..<batch).map { indices[start + min($0, real - 1)] }, epoch: nil)
            let logits = model.forward(images.tensor, training: false)
            for n in 0..<real {
                let row = start + n
                for y in 0..<size {
                    for x in 0..<size {
                        let p = y * size + x
                        let base = ((row * size + y) * 3 * size) * 3
                        for c in 0..<3 {
                            let v = images.tensor.plane(n, min(c, images.shape.c - 1))[p]
                            grid.pixels[base + x * 3 + c] = UInt8(max(0, min(255, (v * 255).rounded())))
                        }
                        let truth = SampleGrid.colour(Int(masks.tensor.sample(n)[p].rounded()), classes: classes)
                        var predicted = 0
                        if classes == 1 {
                            predicted = logits.sample(n)[p] > 0 ? 1 : 0
                        } else {
                            for k in 1..<classes where logits.plane(n, k)[p] > logits.plane(n, predicted)[p] { predicted = k }
                        }
                        let guess = SampleGrid.colour(predicted, classes: classes)
                        for (column, rgb) in [(1, truth), (2, guess)] {
                            let o = base + (column * size + x) * 3
                            grid.pixels[o] = rgb.0; grid.pixels[o + 1] = rgb.1; grid.pixels[o + 2] = rgb.2
                        }
                    }
                }
            }
            start += real
        }
        try ImageFile.write(grid, to: path)
    }
}
