import ArgumentParser
import Foundation
import SegData
import SegDistributed
import SegEngine
import SegInference
import SegTraining

/// `segtrain evaluate`: per-image scores of a trained model on a dataset, like the person-
/// segmentation seed's score.csv; sharded over ranks under mpirun.
struct EvaluateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "evaluate",
        abstract: "Score a trained model image by image on a dataset: accuracy, precision, recall, F1/Dice, IoU.",
        discussion: """
            Every sample of --data (in the layout its flags describe) is predicted at its own size \
            (resized to the training size and back, as `segtrain predict` does) and compared with its \
            mask. --out gets one row per image (per class for multi-class models) and a final `mean` \
            row (the mean over images); the means are printed as a table. Under mpirun rank r scores \
            samples r, r + N, ... and rank 0 writes the file. A ratio of 0/0 (nothing predicted and \
            nothing there) counts as 1.
            """)

    @Option(help: "A run folder (its checkpoints/best, else last) or a checkpoint folder.")
    var model: String
    @Option(help: "Dataset folder.")
    var data: String
    @OptionGroup var files: LayoutOptions
    @Option(help: "list: the file naming the pairs to score (implies --layout list).")
    var list: String?

    var layout: DatasetLayout { files.layout ?? (list != nil ? .list : .pairs) }
    var petBinary: Bool { files.petBinary }
    @Option(help: "A mask value that is no class (not scored); default: the --ignore-index the model was trained with.")
    var ignoreIndex: Int?
    @Option(help: "The per-image scores (CSV).")
    var out = "scores.csv"
    @Option(help: "Worker threads (default: CPUs available / ranks on this node).")
    var threads: Int?
    @Option(help: "Test-time augmentation: none, or flip (the mean over the image and its left-right and top-bottom mirror images; 3x the time).")
    var tta = TestTimeAugmentation.none

    func validate() throws {
        if let message = ThreadDefaults.problem(threads: threads) { throw ValidationError(message) }
        if layout == .list && list == nil { throw ValidationError("--layout list needs --list FILE") }
        if let i = ignoreIndex, !(0...255).contains(i) { throw ValidationError("--ignore-index must be 0...255 (got \(i))") }
    }

    func run() throws {
        try Communicator.runJob { try evaluate($0) }
    }

    private func evaluate(_ communicator: Communicator) throws {
        let isRoot = communicator.rank == 0, ranks = communicator.size
        let pool = WorkerPool(threads: threads ?? ThreadDefaults.threadsPerRank())
        // Every rank loads the model (a failure here is the same everywhere).
        let predictor: Predictor
        do { predictor = try Predictor(path: model, pool: pool) } catch { throw SharedError(description: "\(error)") }
        predictor.tta = tta
        let classes = predictor.description.classes
        let options = files.datasetOptions(layout: layout)
        if layout == .pet && classes != (petBinary ? 1 : 3) {
            throw SharedError(description: "--layout pet\(petBinary ? " --pet-binary" : "") needs a \(petBinary ? 1 : 3)-class model; \(model) has \(classes)")
        }
        // Rank 0 lists, every rank receives the list (each file is checked as it is scored).
        let listing = try SharedListing.receive(roots: [data], collectives: communicator) {
            [layout == .list ? try DatasetScanner.list(root: data, listFile: list!, options: options)
                             : try DatasetScanner.list(root: data, options: options)]
        }[0]
        var spec = SampleSpec(imageSize: predictor.description.imageSize, inChannels: predictor.description.inChannels, classes: classes)
        spec.maskEncoding = options.maskEncoding
        spec.labels = LabelSpec(classes: classes, ignoreIndex: ignoreIndex ?? predictor.description.ignoreIndex)
        if let problem = spec.labels.validate(flag: ignoreIndex != nil ? "--ignore-index" : "the model's ignore index") {
            throw SharedError(description: problem)
        }
        let scores = try Evaluation.score(listing: listing, spec: spec, predictor: predictor, collectives: communicator)
        guard isRoot else { return }
        if let error = writeFileAtomically(out, scores.csv) { throw UserError("--out \(error)") }
        let (names, means) = (scores.columns, scores.means)
        print("segtrain evaluate: \(listing.count) image(s) of \(data) with \(predictor.source) on \(ranks) rank(s)")
        for (name, value) in zip(names, means) { print("  " + pad(name, 14) + lpad(String(format: "%.4f", value), 8)) }
        print("scores: \(out)")
    }
}
