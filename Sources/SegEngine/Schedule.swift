// Learning-rate schedules. The rate of a step is a function of (epoch, position in the epoch) and,
// for ReduceLROnPlateau, of decisions taken at the end of earlier epochs (kept in `PlateauState`,
// which checkpoints carry), so a resumed run uses exactly the rates of an uninterrupted one.

import Foundation

public enum ScheduleKind: String, CaseIterable, Sendable, Codable {
    case constant, step, cosine, poly, plateau
}

public struct ScheduleConfig: Sendable, Equatable {
    public var kind = ScheduleKind.constant
    public var baseRate: Double
    public var epochs: Int
    /// Linear warm-up from 0 over this many epochs (fractions allowed), step by step.
    public var warmupEpochs = 0.0
    /// step: multiply by `gamma` every `stepEpochs` epochs (PyTorch StepLR).
    public var stepEpochs = 30
    public var gamma = 0.1
    /// poly: base * (1 - t / epochs)^power.
    public var power = 0.9
    /// cosine and poly end here; plateau never goes below it.
    public var minimumRate = 0.0
    /// plateau (Keras ReduceLROnPlateau on the validation loss): factor, patience, cooldown.
    public var plateauFactor = 0.1
    public var plateauPatience = 5
    public var plateauCooldown = 0

    public init(kind: ScheduleKind = .constant, baseRate: Double, epochs: Int) {
        self.kind = kind
        self.baseRate = baseRate
        self.epochs = epochs
    }

    /// A one-line error naming the flag, or nil.
    public func validate() -> String? {
        if warmupEpochs < 0 || !warmupEpochs.isFinite { return "--warmup-epochs must be >= 0 (got \(warmupEpochs))" }
        if stepEpochs < 1 { return "--step-epochs must be at least 1 (got \(stepEpochs))" }
        if !(gamma > 0 && gamma <= 1) { return "--gamma must be in (0, 1] (got \(gamma))" }
        if !(power > 0) { return "--power must be positive (got \(power))" }
        if minimumRate < 0 || minimumRate > baseRate { return "--min-lr must be in [0, --lr] (got \(minimumRate))" }
        if !(plateauFactor > 0 && plateauFactor < 1) { return "--plateau-factor must be in (0, 1) (got \(plateauFactor))" }
        if plateauPatience < 0 { return "--plateau-patience must be >= 0 (got \(plateauPatience))" }
        if plateauCooldown < 0 { return "--plateau-cooldown must be >= 0 (got \(plateauCooldown))" }
        return nil
    }
}

/// What ReduceLROnPlateau has decided so far.
public struct PlateauState: Codable, Equatable, Sendable {
    public var rate: Double
    public var best: Double?
    public var badEpochs = 0
    public var cooldownLeft = 0

    public init(rate: Double, best: Double? = nil, badEpochs: Int = 0, cooldownLeft: Int = 0) {
        self.rate = rate
        self.best = best
        self.badEpochs = badEpochs
        self.cooldownLeft = cooldownLeft
    }
}

public struct LearningRateSchedule: Sendable {
    public let config: ScheduleConfig
    public private(set) var plateau: PlateauState

    public init(_ config: ScheduleConfig, plateau: PlateauState? = nil) {
        self.config = config
        self.plateau = plateau ?? PlateauState(rate: config.baseRate)
    }

    /// The rate for the step at `progress` = epochs done before this step (epoch - 1 + batch / batches).
    public func rate(progress t: Double) -> Double {
        let c = config
        var rate: Double
        switch c.kind {
        case .constant: rate = c.baseRate
        case .step: rate = c.baseRate * pow(c.gamma, Double(Int(t) / c.stepEpochs))
        case .cosine:
            let x = min(t / Double(c.epochs), 1)
            rate = c.minimumRate + (c.baseRate - c.minimumRate) * (1 + cos(Double.pi * x)) / 2
        case .poly:
            let x = min(t / Double(c.epochs), 1)
            rate = c.minimumRate + (c.baseRate - c.minimumRate) * pow(1 - x, c.power)
        case .plateau: rate = plateau.rate
        }
        if t < c.warmupEpochs { rate *= t / c.warmupEpochs }
        return rate
    }

    /// End of an epoch: ReduceLROnPlateau on the validation loss with Keras' semantics (mode min,
    /// no min_delta): the cooldown counts down first; an improvement resets the wait; otherwise,
    /// out of cooldown, `patience` epochs without improvement multiply the rate by `factor` (not
    /// below the minimum) and start the cooldown. Returns true when it lowered the rate.
    @discardableResult
    public mutating func endEpoch(validationLoss: Double?) -> Bool {
        guard config.kind == .plateau, let loss = validationLoss else { return false }
        if plateau.cooldownLeft > 0 {
            plateau.cooldownLeft -= 1
            plateau.badEpochs = 0
        }
        if plateau.best.map({ loss < $0 }) ?? true {
            plateau.best = loss
            plateau.badEpochs = 0
            return false
        }
        guard plateau.cooldownLeft == 0 else { return false }
        plateau.badEpochs += 1
        guard plateau.badEpochs >= config.plateauPatience else { return false }
        let lowered = max(plateau.rate * config.plateauFactor, config.minimumRate)
        let changed = lowered < plateau.rate
        plateau.rate = lowered
        plateau.cooldownLeft = config.plateauCooldown
        plateau.badEpochs = 0
        return changed
    }
}
