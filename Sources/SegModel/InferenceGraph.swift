// A model's evaluation-mode forward as a list of plain operations over numbered tensors, with the
// parameters named by their index in the model's ParameterStore: what an exporter walks (SegExport
// writes it as ONNX). Each model family builds its own (`SegmentationModel.inferenceGraph`) from
// the structure it runs, so an exporter knows operations, not models.
//
// Tensor 0 is the normalised images (N, inChannels, H, W); each node reads earlier tensors and
// makes one new tensor; the last tensor is the logits (N, classes, H, W). The operations are the
// evaluation-mode ones: BatchNorm normalises with its running statistics.

import SegEngine

public enum InferenceOp: Sendable {
    /// Cross-correlation as PyTorch's Conv2d: OIHW weight (I = input channels / groups), optional bias.
    case conv(weight: Int, bias: Int?, geometry: ConvGeometry, groups: Int)
    /// PyTorch's ConvTranspose2d(kernel 2, stride 2): IOHW weight, optional bias.
    case convTranspose2x2(weight: Int, bias: Int?)
    /// gamma (x - running mean) / sqrt(running var + epsilon) + beta, per channel.
    case batchNorm(gamma: Int, beta: Int, runningMean: Int, runningVar: Int, epsilon: Float)
    /// PyTorch's GroupNorm: statistics (biased variance) over each group of channels of one image,
    /// then a weight and bias per channel.
    case groupNorm(gamma: Int, beta: Int, groups: Int, epsilon: Float)
    case relu
    /// min(max(x, 0), 6).
    case relu6
    /// Max over kernel x kernel windows; padding counts as -infinity; output sides rounded down.
    case maxPool(kernel: Int, stride: Int, padding: Int)
    case add
    /// x2, every pixel repeated.
    case upsampleNearest2x
    /// x2 with half-pixel centres (PyTorch's interpolate(mode='bilinear', align_corners=False)).
    case upsampleBilinear2x
    /// Zero-pads input 0 to the height and width of input 1: (difference / 2) rows and columns
    /// before, the rest after (padToForward). An identity when the sizes agree.
    case padTo
    /// The inputs side by side along the channels, in order.
    case concat
    /// Bilinear resize (PyTorch's interpolate(mode='bilinear', align_corners)) by an integer factor.
    case resizeBilinear(alignCorners: Bool, scale: Int)
    /// Bilinear resize (align_corners=False) of input 0 to the height and width of input 1 (from a
    /// 1 x 1 map, a broadcast: DeepLabV3+'s image pooling).
    case resizeBilinearLike
    /// Each plane's mean: (N, C, 1, 1).
    case globalAveragePool
}

public struct InferenceNode: Sendable {
    /// Unique within the graph; the PyTorch module's name where there is one ("down.0.conv1").
    public let name: String
    public let op: InferenceOp
    public let inputs: [Int]
    public let output: Int
}

public struct InferenceGraph: Sendable {
    public let inChannels: Int
    public let classes: Int
    /// The smallest image side the graph takes, and what every side must be a multiple of.
    public let minimumSide: Int
    public let sideMultiple: Int
    public private(set) var nodes: [InferenceNode] = []
    private var names: Set<String> = []

    public init(inChannels: Int, classes: Int, minimumSide: Int, sideMultiple: Int) {
        self.inChannels = inChannels
        self.classes = classes
        self.minimumSide = minimumSide
        self.sideMultiple = sideMultiple
    }

    /// Tensors so far (the images and one per node).
    public var tensorCount: Int { nodes.count + 1 }
    /// The logits.
    public var output: Int { tensorCount - 1 }

    /// Appends a node reading `inputs` and returns its output tensor.
    @discardableResult
    public mutating func add(_ name: String, _ op: InferenceOp, _ inputs: [Int]) -> Int {
        precondition(names.insert(name).inserted, "inference graph: duplicate node name \(name)")
        precondition(inputs.allSatisfy { $0 >= 0 && $0 < tensorCount }, "inference graph: \(name) reads a later tensor")
        nodes.append(InferenceNode(name: name, op: op, inputs: inputs, output: tensorCount))
        return tensorCount - 1
    }
}

extension LayerGraph {
    /// The layers as inference nodes: BatchNorm in evaluation mode, a fused ReLU as its own node.
    func inferenceGraph(classes: Int, sizeMultiple: Int) -> InferenceGraph {
        var g = InferenceGraph(inChannels: channels[0], classes: classes, minimumSide: sizeMultiple, sideMultiple: sizeMultiple)
        var tensor = [0]  // layer-graph tensor -> inference tensor
        for layer in layers {
            let x = layer.inputs.map { tensor[$0] }
            let y: Int
            switch layer.op {
            case .conv(let weight, let bias, let geometry):
                y = g.add(layer.name, .conv(weight: weight, bias: bias, geometry: geometry, groups: 1), x)
            case .depthwise(let weight, let stride, let dilation):
                let c = channels[layer.inputs[0]]
                let geometry = ConvGeometry(kernel: 3, stride: stride, padding: dilation, dilation: dilation)
                y = g.add(layer.name, .conv(weight: weight, bias: nil, geometry: geometry, groups: c), x)
            case .batchNorm(let bn, _, let relu):
                let normalized = g.add(layer.name, .batchNorm(gamma: bn.gamma, beta: bn.beta, runningMean: bn.runningMean,
                                                              runningVar: bn.runningVar, epsilon: batchNormEpsilon), x)
                y = relu ? g.add("\(layer.name).relu", .relu, [normalized]) : normalized
            case .relu6:
                y = g.add(layer.name, .relu6, x)
            case .maxPool:
                y = g.add(layer.name, .maxPool(kernel: 3, stride: 2, padding: 1), x)
            case .add(let relu):
                let sum = g.add(layer.name, .add, x)
                y = relu ? g.add("\(layer.name).relu", .relu, [sum]) : sum
            case .upsampleNearest:
                y = g.add(layer.name, .upsampleNearest2x, x)
            case .concat:
                y = g.add(layer.name, .concat, x)
            case .resize(let alignCorners, .scale(let factor)):
                y = g.add(layer.name, .resizeBilinear(alignCorners: alignCorners, scale: factor), x)
            case .resize(let alignCorners, .like(let other)):
                precondition(!alignCorners, "\(layer.name): a resize to another tensor's size is align_corners=False")
                y = g.add(layer.name, .resizeBilinearLike, x + [tensor[other]])
            case .globalAveragePool:
                y = g.add(layer.name, .globalAveragePool, x)
            case .dropout:
                y = x[0]  // an identity in evaluation
            }
            precondition(tensor.count == layer.output, "layer graph tensors are not in order")
            tensor.append(y)
        }
        return g
    }
}

extension GraphModel {
    public var inferenceGraph: InferenceGraph { graph.inferenceGraph(classes: family.classes, sizeMultiple: family.sizeMultiple) }
}
