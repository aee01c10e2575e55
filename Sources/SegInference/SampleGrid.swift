import SegData
import SegEngine
import SegModel

/// For a few fixed validation images, one row each of image (with the predicted regions' outline in
/// yellow) | truth | prediction, under a band of column labels, with light grey separators;
/// written as OUT/samples/epoch-NNN.png by rank 0.
public final class SampleGrid {
    let source: SampleSource
    let indices: [Int]
    let images: OwnedTensor
    let masks: OwnedTensor
    let batch: Int

    /// `batch`: the model's planned batch (forward runs in chunks of it, padded).
    public init(source: SampleSource, count: Int, imageSize: Int, inChannels: Int, batch: Int) {
        self.source = source
        indices = Array(0..<min(count, source.count))
        self.batch = batch
        images = OwnedTensor(Shape(batch, inChannels, imageSize, imageSize))
        masks = OwnedTensor(Shape(batch, 1, imageSize, imageSize))
    }

    /// Class k's colour: black background, then distinct bright colours; a value that is no
    /// class (the ignore index) mid grey.
    public static func colour(_ k: Int, classes: Int) -> (UInt8, UInt8, UInt8) {
        if k == 0 { return (0, 0, 0) }
        if k >= max(classes, 2) { return (128, 128, 128) }
        if classes <= 2 { return (255, 255, 255) }
        let palette: [(UInt8, UInt8, UInt8)] = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200),
                                                (245, 130, 48), (145, 30, 180), (70, 240, 240), (240, 50, 230)]
        return palette[(k - 1) % palette.count]
    }

    /// Pixels between columns and rows (light grey), and the label band's height.
    static let separator = 2, headerHeight = PixelFont.height + 4
    static let separatorColour: (UInt8, UInt8, UInt8) = (200, 200, 200)
    static let outlineColour: (UInt8, UInt8, UInt8) = (255, 220, 0)

    /// Where column `column` (0 image, 1 truth, 2 prediction) of row `row` starts, for `size` px images.
    static func origin(column: Int, row: Int, size: Int) -> (x: Int, y: Int) {
        (column * (size + separator), headerHeight + row * (size + separator))
    }

    /// Writes the grid of `model`'s predictions as a PNG file; returns the grid.
    @discardableResult
    public func write(model: any SegmentationModel, to path: String) throws -> Image8 {
        let grid = try render(model: model)
        try ImageFile.write(grid, to: path)
        return grid
    }

    /// The grid of `model`'s predictions (RGB).
    public func render(model: any SegmentationModel) throws -> Image8 {
        let size = images.shape.h, classes = model.classes, sep = SampleGrid.separator
        var grid = Image8(width: 3 * size + 2 * sep, height: SampleGrid.headerHeight + indices.count * (size + sep) - sep,
                          channels: 3)
        grid.fill(x: 0, y: 0, width: grid.width, height: grid.height, rgb: SampleGrid.separatorColour)
        grid.fill(x: 0, y: 0, width: grid.width, height: SampleGrid.headerHeight, rgb: (40, 40, 40))
        // Column labels, the longest that fits the column.
        for (column, names) in [["image", "img"], ["truth"], ["prediction", "pred"]].enumerated() {
            guard let name = names.first(where: { PixelFont.width($0) <= size }) else { continue }
            let x = SampleGrid.origin(column: column, row: 0, size: size).x + (size - PixelFont.width(name)) / 2
            grid.draw(text: name, x: x, y: 2, rgb: (235, 235, 235))
        }
        var start = 0
        while start < indices.count {
            let real = min(batch, indices.count - start)
            try source.fill(images: images.tensor, masks: masks.tensor,
                            indices: (0..<batch).map { indices[start + min($0, real - 1)] }, epoch: nil)
            let logits = model.forward(images.tensor, training: false)
            for n in 0..<real {
                let row = start + n
                var predictedLabels = [Int](repeating: 0, count: size * size)
                for p in 0..<(size * size) {
                    var predicted = 0
                    if classes == 1 {
                        predicted = logits.sample(n)[p] > 0 ? 1 : 0
                    } else {
                        for k in 1..<classes where logits.plane(n, k)[p] > logits.plane(n, predicted)[p] { predicted = k }
                    }
                    predictedLabels[p] = predicted
                }
                // The image with the predicted regions' outline over it.
                let outline = labelOutline(predictedLabels, width: size, height: size)
                for y in 0..<size {
                    for x in 0..<size {
                        let p = y * size + x
                        let (ix, iy) = SampleGrid.origin(column: 0, row: row, size: size)
                        let o = ((iy + y) * grid.width + ix + x) * 3
                        for c in 0..<3 {
                            let v = images.tensor.plane(n, min(c, images.shape.c - 1))[p]
                            grid.pixels[o + c] = UInt8(max(0, min(255, (v * 255).rounded())))
                        }
                        if outline[p] {
                            let rgb = SampleGrid.outlineColour
                            grid.pixels[o] = rgb.0; grid.pixels[o + 1] = rgb.1; grid.pixels[o + 2] = rgb.2
                        }
                        let truth = SampleGrid.colour(Int(masks.tensor.sample(n)[p].rounded()), classes: classes)
                        let guess = SampleGrid.colour(predictedLabels[p], classes: classes)
                        for (column, rgb) in [(1, truth), (2, guess)] {
                            let (cx, cy) = SampleGrid.origin(column: column, row: row, size: size)
                            let q = ((cy + y) * grid.width + cx + x) * 3
                            grid.pixels[q] = rgb.0; grid.pixels[q + 1] = rgb.1; grid.pixels[q + 2] = rgb.2
                        }
                    }
                }
            }
            start += real
        }
        return grid
    }
}
