import XCTest
@testable import SegData

/// The sample grid's drawing: rectangles, the 5x7 label font, and the outline of a label map.
final class ImageDrawingTests: XCTestCase {
    func testFillIsClippedToTheImage() {
        var image = Image8(width: 4, height: 3, channels: 3)
        image.fill(x: 2, y: -1, width: 5, height: 2, rgb: (1, 2, 3))
        for y in 0..<3 {
            for x in 0..<4 {
                let inside = x >= 2 && y == 0
                XCTAssertEqual([image[x, y, 0], image[x, y, 1], image[x, y, 2]], inside ? [1, 2, 3] : [0, 0, 0], "(\(x), \(y))")
            }
        }
    }

    /// Every glyph the grid uses is defined and drawn where it should be; "i" lights its dot and
    /// stem only; text is clipped at the edge.
    func testTextDrawsTheGlyphsAndClips() {
        for word in ["image", "img", "truth", "prediction", "pred", "epoch 0123456789.|"] {
            for character in word where character != " " {
                XCTAssertNotNil(PixelFont.glyphs[character], "no glyph for \(character)")
            }
        }
        XCTAssertEqual(PixelFont.width("prediction"), 59)
        var image = Image8(width: 5, height: 7, channels: 3)
        image.draw(text: "i", x: 0, y: 0, rgb: (255, 255, 255))
        var lit: [String] = []
        for y in 0..<7 { lit.append((0..<5).map { image[$0, y, 0] == 255 ? "#" : "." }.joined()) }
        XCTAssertEqual(lit, ["..#..", ".....", ".##..", "..#..", "..#..", "..#..", ".###."])
        var small = Image8(width: 3, height: 3, channels: 3)
        small.draw(text: "truth", x: -2, y: -2, rgb: (9, 9, 9))  // partly outside: no crash, some pixels set
        XCTAssertTrue(small.pixels.contains(9))
    }

    /// The outline is the foreground pixels next to another label, not the interior nor background.
    func testOutlineOfALabelMap() {
        // A 3x3 square of 1 in a 5x5 background, and a single pixel of 2 touching it.
        var labels = [Int](repeating: 0, count: 25)
        for y in 1...3 { for x in 1...3 { labels[y * 5 + x] = 1 } }
        labels[2 * 5 + 4] = 2
        let outline = labelOutline(labels, width: 5, height: 5)
        var rows: [String] = []
        for y in 0..<5 { rows.append((0..<5).map { outline[y * 5 + $0] ? "#" : "." }.joined()) }
        XCTAssertEqual(rows, [".....",
                              ".###.",
                              ".#.##",
                              ".###.",
                              "....."])
    }
}
