// `segtrain export --format onnx` (issue #20): a trained model as an ONNX file (opset 17, IR 8) that
// onnxruntime and other runtimes run. The exporter walks the model's `InferenceGraph`
// (SegModel/InferenceGraph.swift), one or a few ONNX nodes per operation, so it knows operations,
// not model families; the weights go in as initializers named as in model.safetensors.
//
// The contract (README "Export to ONNX"):
// - input "image": float32 (batch, C, height, width), the NORMALISED image the network sees in
//   training and in `segtrain predict`: pixel / 255, then (x - mean) / std per channel when the
//   model was trained with --mean/--std (metadata_props "mean", "std"; absent: pixel / 255 only).
//   Batch and sides are symbolic; the plain UNet takes any side >= 2^depth, an encoder UNet sides
//   that are multiples of 32 (metadata_props "min_side", "side_multiple").
// - output "logits" (batch, K, height, width), or with --activation "probabilities": Sigmoid (one
//   class) or Softmax over the classes.
// Operations without an ONNX op of their own: BatchNorm in evaluation mode is BatchNormalization
// with the running statistics (not folded into the convolutions, so the weights stay as trained);
// GroupNorm is Reshape to (N, G, -1) + InstanceNormalization (unit scale, zero bias) + Reshape
// back + Mul/Add by the per-channel weight and bias; the pad of an odd side is computed from the
// two tensors' shapes (Shape, Sub, Div, Concat, Pad), so one file serves every size.

import Foundation
import SegEngine
import SegModel
import SwiftProtobuf

/// What the exported model's output is.
public enum ExportActivation: String, CaseIterable, Sendable {
    /// The logits.
    case none
    /// Sigmoid of the logits (one class: the foreground probability).
    case sigmoid
    /// Softmax over the classes (two or more).
    case softmax
}

public struct ExportError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

public enum ONNXExport {
    public static let opset: Int64 = 17
    /// The IR version that goes with opset 17 (ONNX 1.12).
    public static let irVersion: Int64 = 8
    public static let inputName = "image"
    /// Weights an ONNX file without external data can hold: protobuf's 2 GiB less room for the graph.
    public static let maximumWeightBytes = (1 << 31) - (1 << 24)

    /// Why `activation` does not suit a model of `classes` classes, or nil.
    public static func problem(activation: ExportActivation, classes: Int) -> String? {
        switch activation {
        case .none: return nil
        case .sigmoid where classes != 1:
            return "--activation sigmoid is for one-class models; this one has \(classes) classes (use softmax)"
        case .softmax where classes < 2:
            return "--activation softmax is for models of two or more classes; this one has one (use sigmoid)"
        default: return nil
        }
    }

    public static func outputName(_ activation: ExportActivation) -> String {
        activation == .none ? "logits" : "probabilities"
    }

    /// Loads the model in `modelPath` (a run or checkpoint folder), writes it to `out` atomically and
    /// returns a one-line summary. Errors name the flag or file.
    public static func export(modelPath: String, to out: String, activation: ExportActivation) throws -> String {
        guard let folder = RunDirectory.checkpointFolder(named: modelPath) else {
            throw ExportError("--model \(modelPath): not a checkpoint or run folder (no state.json, checkpoints/best or checkpoints/last)")
        }
        let description: ModelDescription
        do { description = try Checkpoint.readModelDescription(from: folder) } catch { throw ExportError("\(error)") }
        if let problem = description.problem { throw ExportError("\(folder)/state.json: \(problem)") }
        if let problem = problem(activation: activation, classes: description.classes) { throw ExportError(problem) }
        // The model is built (weights and their gradients) and its weights copied once more into the
        // message: refuse what does not fit before allocating it, as predict does. A protobuf message
        // is at most 2 GiB (ONNX's external-data files are not written).
        let counts = description.architecture.estimatedParameterCounts
        let weightBytes = (counts.parameters + counts.buffers) * 4
        if weightBytes > Double(maximumWeightBytes) {
            throw ExportError("\(folder)/state.json: the model's weights take \(SystemMemory.describe(weightBytes)); an ONNX "
                              + "file holds at most \(SystemMemory.describe(Double(maximumWeightBytes))) (external data is not supported)")
        }
        if let available = SystemMemory.availableBytes(), 4 * weightBytes > Double(available) {
            throw ExportError("\(folder)/state.json: exporting the model needs about \(SystemMemory.describe(4 * weightBytes)), but "
                              + "\(SystemMemory.describe(Double(available))) is available (MemAvailable)")
        }
        let model = description.architecture.build(pool: WorkerPool(threads: 1))
        do { try Checkpoint.readWeights(from: folder, into: model.store) } catch { throw ExportError("\(error)") }
        let bytes: [UInt8]
        do {
            bytes = try serialize(model, description: description, activation: activation, source: folder)
        } catch let error as ExportError { throw error } catch {
            throw ExportError("cannot encode the ONNX model: \(error)")
        }
        if let problem = writeFileAtomically(out, bytes: bytes) { throw ExportError("--out \(problem)") }
        let graph = model.inferenceGraph
        return "wrote \(out): ONNX opset \(opset), \(graph.nodes.count) operations, \(model.parameterCount) parameters, "
            + "input \(inputName) (batch, \(graph.inChannels), height, width), output \(outputName(activation)) "
            + "(batch, \(graph.classes), height, width), \(bytes.count) bytes"
    }

    /// The ONNX model's bytes (protobuf).
    public static func serialize(_ model: any SegmentationModel, description: ModelDescription,
                                 activation: ExportActivation, source: String) throws -> [UInt8] {
        let proto = try build(model, description: description, activation: activation, source: source)
        return try proto.serializedBytes()
    }

    static func build(_ model: any SegmentationModel, description: ModelDescription, activation: ExportActivation,
                      source: String) throws -> Onnx_ModelProto {
        if let problem = problem(activation: activation, classes: model.classes) { throw ExportError(problem) }
        var builder = GraphBuilder(store: model.store)
        let graph = model.inferenceGraph
        builder.translate(graph, activation: activation)

        var g = Onnx_GraphProto()
        g.name = "segtrain"
        g.node = builder.nodes
        g.initializer = builder.initializers
        g.input = [valueInfo(inputName, channels: graph.inChannels)]
        g.output = [valueInfo(outputName(activation), channels: graph.classes)]

        var m = Onnx_ModelProto()
        m.irVersion = irVersion
        var opsetID = Onnx_OperatorSetIdProto()
        opsetID.domain = ""
        opsetID.version = opset
        m.opsetImport = [opsetID]
        m.producerName = "segtrain"
        m.graph = g
        m.docString = "segtrain \(description.flagValues.map { "\($0.flag) \($0.value)" }.joined(separator: " ")): "
            + "input \(inputName) is the normalised image (pixel / 255, then (x - mean) / std per channel when "
            + "metadata_props has mean and std), NCHW float32"
        var props: [(String, String)] = [
            ("input", "\(inputName): float32 (batch, \(graph.inChannels), height, width), pixel / 255"
                + (description.mean != nil ? ", then (x - mean) / std per channel" : "")),
            ("output", "\(outputName(activation)): float32 (batch, \(graph.classes), height, width)"
                + (activation == .none ? " (" + (graph.classes == 1 ? "sigmoid" : "softmax") + " gives probabilities)" : "")),
            ("classes", "\(graph.classes)"),
            ("image_size", "\(description.imageSize)"),
            ("min_side", "\(graph.minimumSide)"),
            ("side_multiple", "\(graph.sideMultiple)"),
            ("model", description.flagValues.map { "\($0.flag) \($0.value)" }.joined(separator: " ")),
            ("source", source),
        ]
        func list(_ values: [Float]) -> String { values.map { "\($0)" }.joined(separator: ",") }
        if let mean = description.mean, let std = description.std {
            props += [("mean", list(mean)), ("std", list(std))]
        }
        if let names = description.classNames { props.append(("class_names", names.joined(separator: ","))) }
        m.metadataProps = props.map { key, value in
            var entry = Onnx_StringStringEntryProto()
            entry.key = key
            entry.value = value
            return entry
        }
        return m
    }

    private static func valueInfo(_ name: String, channels: Int) -> Onnx_ValueInfoProto {
        var shape = Onnx_TensorShapeProto()
        shape.dim = [.symbol("batch"), .value(channels), .symbol("height"), .symbol("width")]
        var tensor = Onnx_TypeProto.Tensor()
        tensor.elemType = Int32(Onnx_TensorProto.DataType.float.rawValue)
        tensor.shape = shape
        var type = Onnx_TypeProto()
        type.tensorType = tensor
        var info = Onnx_ValueInfoProto()
        info.name = name
        info.type = type
        return info
    }
}

extension Onnx_TensorShapeProto.Dimension {
    static func symbol(_ name: String) -> Self { var d = Self(); d.dimParam = name; return d }
    static func value(_ n: Int) -> Self { var d = Self(); d.dimValue = Int64(n); return d }
}

/// Turns inference nodes into ONNX nodes and initializers.
struct GraphBuilder {
    let store: ParameterStore
    private(set) var nodes: [Onnx_NodeProto] = []
    private(set) var initializers: [Onnx_TensorProto] = []
    private var initializerNames: Set<String> = []
    /// ONNX name of every inference tensor.
    private var names: [String] = []

    init(store: ParameterStore) { self.store = store }

    mutating func translate(_ graph: InferenceGraph, activation: ExportActivation) {
        names = [ONNXExport.inputName]
        for node in graph.nodes {
            let last = node.output == graph.output
            let out = last && activation == .none ? "logits" : node.name
            emit(node, output: out)
            names.append(out)
        }
        switch activation {
        case .none: break
        case .sigmoid: add("Sigmoid", [names[graph.output]], "probabilities", name: "activation")
        case .softmax: add("Softmax", [names[graph.output]], "probabilities", name: "activation", [.int("axis", 1)])
        }
    }

    private mutating func emit(_ node: InferenceNode, output out: String) {
        let x = names[node.inputs[0]], n = node.name
        switch node.op {
        case .conv(let weight, let bias, let geometry, let groups):
            let k = Int64(geometry.kernel), s = Int64(geometry.stride), p = Int64(geometry.padding)
            let d = Int64(geometry.dilation)
            add("Conv", [x, parameter(weight)] + (bias.map { [parameter($0)] } ?? []), out, name: n,
                [.ints("kernel_shape", [k, k]), .ints("strides", [s, s]), .ints("pads", [p, p, p, p]),
                 .ints("dilations", [d, d]), .int("group", Int64(groups))])
        case .convTranspose2x2(let weight, let bias):
            add("ConvTranspose", [x, parameter(weight)] + (bias.map { [parameter($0)] } ?? []), out, name: n,
                [.ints("kernel_shape", [2, 2]), .ints("strides", [2, 2])])
        case .batchNorm(let gamma, let beta, let mean, let variance, let epsilon):
            add("BatchNormalization", [x, parameter(gamma), parameter(beta), parameter(mean), parameter(variance)], out,
                name: n, [.float("epsilon", epsilon)])
        case .groupNorm(let gamma, let beta, let groups, let epsilon):
            // (N, C, H, W) -> (N, G, C/G * H * W): each group's channels are contiguous in NCHW.
            let grouped = constant("groupnorm.shape.\(groups)", int64: [0, Int64(groups), -1])
            let ones = constant("groupnorm.ones.\(groups)", float: [Float](repeating: 1, count: groups), dims: [Int64(groups)])
            let zeros = constant("groupnorm.zeros.\(groups)", float: [Float](repeating: 0, count: groups), dims: [Int64(groups)])
            add("Reshape", [x, grouped], "\(n).grouped", name: "\(n).grouped")
            add("InstanceNormalization", ["\(n).grouped", ones, zeros], "\(n).normalized", name: "\(n).normalized",
                [.float("epsilon", epsilon)])
            add("Shape", [x], "\(n).shape", name: "\(n).shape")
            add("Reshape", ["\(n).normalized", "\(n).shape"], "\(n).ungrouped", name: "\(n).ungrouped")
            add("Mul", ["\(n).ungrouped", parameter(gamma, channelVector: true)], "\(n).scaled", name: "\(n).scaled")
            add("Add", ["\(n).scaled", parameter(beta, channelVector: true)], out, name: n)
        case .relu:
            add("Relu", [x], out, name: n)
        case .relu6:
            add("Clip", [x, constant("relu6.min", float: [0], dims: []), constant("relu6.max", float: [6], dims: [])],
                out, name: n)
        case .maxPool(let kernel, let stride, let padding):
            let k = Int64(kernel), s = Int64(stride), p = Int64(padding)
            add("MaxPool", [x], out, name: n, [.ints("kernel_shape", [k, k]), .ints("strides", [s, s]),
                                               .ints("pads", [p, p, p, p])])
        case .add:
            add("Add", [x, names[node.inputs[1]]], out, name: n)
        case .upsampleNearest2x:
            add("Resize", [x, "", constant("resize.scales", float: [1, 1, 2, 2], dims: [4])], out, name: n,
                [.string("mode", "nearest"), .string("coordinate_transformation_mode", "asymmetric"),
                 .string("nearest_mode", "floor")])
        case .upsampleBilinear2x:
            add("Resize", [x, "", constant("resize.scales", float: [1, 1, 2, 2], dims: [4])], out, name: n,
                [.string("mode", "linear"), .string("coordinate_transformation_mode", "half_pixel")])
        case .padTo:
            // pads = [0, 0, top, left, 0, 0, bottom, right] with (top, left) = difference / 2.
            let reference = names[node.inputs[1]]
            let zeros = constant("pad.zeros", int64: [0, 0])
            let two = constant("pad.two", int64: [2])
            add("Shape", [reference], "\(n).target", name: "\(n).target", [.int("start", 2)])
            add("Shape", [x], "\(n).size", name: "\(n).size", [.int("start", 2)])
            add("Sub", ["\(n).target", "\(n).size"], "\(n).difference", name: "\(n).difference")
            add("Div", ["\(n).difference", two], "\(n).before", name: "\(n).before")
            add("Sub", ["\(n).difference", "\(n).before"], "\(n).after", name: "\(n).after")
            add("Concat", [zeros, "\(n).before", zeros, "\(n).after"], "\(n).pads", name: "\(n).pads", [.int("axis", 0)])
            add("Pad", [x, "\(n).pads"], out, name: n, [.string("mode", "constant")])
        case .concat:
            add("Concat", node.inputs.map { names[$0] }, out, name: n, [.int("axis", 1)])
        case .resizeBilinear(let alignCorners, let scale):
            let f = Float(scale)
            add("Resize", [x, "", constant("resize.scales.\(scale)", float: [1, 1, f, f], dims: [4])], out, name: n,
                [.string("mode", "linear"),
                 .string("coordinate_transformation_mode", alignCorners ? "align_corners" : "half_pixel")])
        case .resizeBilinearLike:
            // sizes = [N, C] of input 0 followed by [H, W] of input 1.
            add("Shape", [x], "\(n).batch", name: "\(n).batch", [.int("end", 2)])
            add("Shape", [names[node.inputs[1]]], "\(n).target", name: "\(n).target", [.int("start", 2)])
            add("Concat", ["\(n).batch", "\(n).target"], "\(n).sizes", name: "\(n).sizes", [.int("axis", 0)])
            add("Resize", [x, "", "", "\(n).sizes"], out, name: n,
                [.string("mode", "linear"), .string("coordinate_transformation_mode", "half_pixel")])
        case .globalAveragePool:
            add("GlobalAveragePool", [x], out, name: n)
        }
    }

    private mutating func add(_ type: String, _ inputs: [String], _ output: String, name: String,
                              _ attributes: [Onnx_AttributeProto] = []) {
        var node = Onnx_NodeProto()
        node.opType = type
        node.name = name
        node.input = inputs
        node.output = [output]
        node.attribute = attributes
        nodes.append(node)
    }

    /// The store's tensor `index` as an initializer named as in model.safetensors (once); a
    /// `channelVector` as (C, 1, 1), to broadcast over (N, C, H, W).
    private mutating func parameter(_ index: Int, channelVector: Bool = false) -> String {
        let entry = store.entries[index]
        let name = entry.name
        if initializerNames.contains(name) { return name }
        let s = entry.shape
        let dims: [Int64]
        if channelVector {
            dims = [Int64(s.count), 1, 1]
        } else if s.c == 1 && s.h == 1 && s.w == 1 {
            dims = [Int64(s.n)]  // vectors are stored as (count, 1, 1, 1)
        } else {
            dims = [s.n, s.c, s.h, s.w].map(Int64.init)
        }
        let t = store.value(index)
        appendInitializer(name, dims: dims, type: .float,
                          raw: Data(bytes: t.data, count: t.count * MemoryLayout<Float>.size))
        return name
    }

    private mutating func constant(_ name: String, float values: [Float], dims: [Int64]) -> String {
        if !initializerNames.contains(name) {
            appendInitializer(name, dims: dims, type: .float, raw: values.withUnsafeBytes { Data($0) })
        }
        return name
    }

    private mutating func constant(_ name: String, int64 values: [Int64]) -> String {
        if !initializerNames.contains(name) {
            appendInitializer(name, dims: [Int64(values.count)], type: .int64, raw: values.withUnsafeBytes { Data($0) })
        }
        return name
    }

    /// raw_data is little-endian (ONNX's rule); this is a little-endian host (x86_64, arm64).
    private mutating func appendInitializer(_ name: String, dims: [Int64], type: Onnx_TensorProto.DataType, raw: Data) {
        var t = Onnx_TensorProto()
        t.name = name
        t.dims = dims
        t.dataType = Int32(type.rawValue)
        t.rawData = raw
        initializers.append(t)
        initializerNames.insert(name)
    }
}

extension Onnx_AttributeProto {
    static func int(_ name: String, _ value: Int64) -> Self {
        var a = Self(); a.name = name; a.type = .int; a.i = value; return a
    }
    static func ints(_ name: String, _ values: [Int64]) -> Self {
        var a = Self(); a.name = name; a.type = .ints; a.ints = values; return a
    }
    static func float(_ name: String, _ value: Float) -> Self {
        var a = Self(); a.name = name; a.type = .float; a.f = value; return a
    }
    static func string(_ name: String, _ value: String) -> Self {
        var a = Self(); a.name = name; a.type = .string; a.s = Data(value.utf8); return a
    }
}

#if !(arch(x86_64) || arch(arm64))
#error("ONNX raw_data is little-endian: check the host's byte order before building SegExport elsewhere")
#endif
