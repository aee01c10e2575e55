// torchvision's MobileNetV2 as smp's MobileNetV2Encoder uses it (issue #16): features.0 is a 3x3/2
// conv + BN + ReLU6 to 32 channels; features.1..17 are inverted residual blocks (t, c, n, s) =
// (1,16,1,1) (6,24,2,2) (6,32,3,2) (6,64,4,2) (6,96,3,1) (6,160,3,2) (6,320,1,1), the first of each
// group with stride s; features.18 is a 1x1 conv + BN + ReLU6 to 1280. No classifier.
//
// An inverted residual block, names under "encoder.features.{i}.conv.":
//   t = 1:  0.0 depthwise 3x3 (stride), 0.1 BN, ReLU6; 1 pointwise 1x1 to c; 2 BN
//   t > 1:  0.0 pointwise 1x1 to t*Cin, 0.1 BN, ReLU6; 1.0 depthwise 3x3 (stride), 1.1 BN, ReLU6;
//           2 pointwise 1x1 to c; 3 BN
// plus the input when the stride is 1 and Cin = c. Channels are multiples of 8 at width 1.0 already.
//
// Output stride 16 or 8 (DeepLabV3+, smp's make_dilated): features.14-18 (the 1/32 stage) and, for
// 8, features.7-13 (1/16) run their depthwise convolutions at stride 1 with dilation stage stride /
// output stride (padding the same); the residual connections stay as the strides planned them.

/// The encoder's features for the decoder, from the finest: features.1 (1/2, 16 channels),
/// features.3 (1/4, 24), features.6 (1/8, 32), features.13 (1/16, 96), features.18 (1/32, 1280).
/// `widthDivisor` > 1 narrows every width (tests only); `outputStride` as above.
func buildMobileNetV2Encoder(_ graph: inout LayerGraph, widthDivisor: Int = 1, outputStride: Int = 32) -> [Int] {
    func narrow(_ c: Int) -> Int { max(1, c / widthDivisor) }
    let p = "encoder.features"
    graph.convInit = .heNormalFanOut
    var x = graph.conv("\(p).0.0", 0, out: narrow(32), kernel: 3, stride: 2, padding: 1)
    x = graph.relu6("\(p).0.2", graph.batchNorm("\(p).0.1", x, relu: false))
    let settings: [(t: Int, c: Int, n: Int, s: Int)] = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                                                        (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
    let featureIndices: Set = [1, 3, 6, 13]
    var features: [Int] = []
    var index = 1
    for group in settings {
        for b in 0..<group.n {
            let name = "\(p).\(index).conv"
            let stride = b == 0 ? group.s : 1
            let stageStride = index >= 14 ? 32 : index >= 7 ? 16 : 1
            let dilation = max(1, stageStride / outputStride)
            let input = x
            var y = x, next = 0
            if group.t != 1 {
                y = graph.conv("\(name).0.0", y, out: graph.channels[x] * group.t, kernel: 1)
                y = graph.relu6("\(name).0.2", graph.batchNorm("\(name).0.1", y, relu: false))
                next = 1
            }
            y = graph.depthwise("\(name).\(next).0", y, stride: dilation > 1 ? 1 : stride, dilation: dilation)
            y = graph.relu6("\(name).\(next).2", graph.batchNorm("\(name).\(next).1", y, relu: false))
            y = graph.conv("\(name).\(next + 1)", y, out: narrow(group.c), kernel: 1)
            y = graph.batchNorm("\(name).\(next + 2)", y, relu: false)
            x = stride == 1 && graph.channels[input] == narrow(group.c) ? graph.add("\(p).\(index).add", y, input, relu: false) : y
            if featureIndices.contains(index) { features.append(x) }
            index += 1
        }
    }
    x = graph.conv("\(p).18.0", x, out: narrow(1280), kernel: 1)
    x = graph.relu6("\(p).18.2", graph.batchNorm("\(p).18.1", x, relu: false))
    features.append(x)
    return features
}
