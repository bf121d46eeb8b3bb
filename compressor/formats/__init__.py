"""Storage formats, the bottom layer above the base helpers: CSR packing of pruned weights
(`csr`), the INQ power-of-two levels (`pow2_levels`) and their packed 4-bit codes (`pow2_codes`),
and int8 codes with their scales (`int8_codes`). Pure tensor code: imports nothing of compressor
but errors."""
