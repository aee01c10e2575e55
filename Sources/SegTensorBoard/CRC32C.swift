// CRC-32C (Castagnoli), the checksum of TFRecord framing that TensorBoard's event files use, and
// its "masked" form. Table-driven, one byte at a time: an event file gets a few kilobytes per
// epoch, so the simple table is plenty.

public enum CRC32C {
    /// The reflected Castagnoli polynomial 0x1EDC6F41 (bit-reversed: 0x82F63B78).
    static let polynomial: UInt32 = 0x82F6_3B78

    /// table[b]: the CRC register after shifting the byte b through it (reflected, LSB first).
    static let table: [UInt32] = (0..<256).map { byte -> UInt32 in
        var crc = UInt32(byte)
        for _ in 0..<8 { crc = crc & 1 == 1 ? (crc >> 1) ^ polynomial : crc >> 1 }
        return crc
    }

    /// CRC-32C of `bytes` (initial value and final xor 0xFFFFFFFF, as in RFC 3720 and TFRecord).
    public static func checksum(_ bytes: UnsafeRawBufferPointer) -> UInt32 {
        var crc: UInt32 = 0xFFFF_FFFF
        table.withUnsafeBufferPointer { t in
            for b in bytes { crc = t[Int((crc ^ UInt32(b)) & 0xFF)] ^ (crc >> 8) }
        }
        return crc ^ 0xFFFF_FFFF
    }

    public static func checksum(_ bytes: [UInt8]) -> UInt32 {
        bytes.withUnsafeBytes { checksum($0) }
    }

    /// TFRecord's masked CRC: rotated right by 15 bits plus a constant, so that a CRC stored inside
    /// checksummed data does not make the outer checksum trivial.
    public static func masked(_ crc: UInt32) -> UInt32 {
        ((crc >> 15) | (crc << 17)) &+ 0xA282_EAD8
    }

    /// The inverse of `masked`.
    public static func unmasked(_ masked: UInt32) -> UInt32 {
        let rotated = masked &- 0xA282_EAD8
        return (rotated >> 17) | (rotated << 15)
    }
}
