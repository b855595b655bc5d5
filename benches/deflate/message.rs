//! The benchmark's messages: 4 KiB of JSON-like text such as a feed of quotes would send
//! (the same keys over and over, varied values), different for every sequence number, so
//! nothing compresses across messages by accident and every delivery can be checked.

/// Every message is exactly this long.
pub const MESSAGE_LEN: usize = 4096;

/// The message starts with `{"seq":"` and a fixed-width sequence number, so a receiver
/// finds it without parsing the JSON.
const SEQ_PREFIX: &[u8] = b"{\"seq\":\"";
const SEQ_DIGITS: usize = 10;

const SYMBOLS: [&str; 24] = [
    "AAPL", "MSFT", "GOOG", "AMZN", "NVDA", "META", "TSLA", "BRK.B", "JPM", "V", "UNH", "XOM",
    "JNJ", "WMT", "MA", "PG", "HD", "CVX", "LLY", "ABBV", "KO", "PEP", "AVGO", "COST",
];
const VENUES: [&str; 8] = [
    "XNAS", "XNYS", "ARCX", "BATS", "EDGX", "IEXG", "MEMX", "XCHI",
];
const SIDES: [&str; 2] = ["buy", "sell"];
const TAGS: [&str; 9] = [
    "odd-lot",
    "ext-hours",
    "iceberg",
    "retail",
    "block",
    "intermarket-sweep",
    "auction",
    "derivative",
    "late",
];
const WORDS: [&str; 16] = [
    "market",
    "opened",
    "higher",
    "after",
    "earnings",
    "beat",
    "estimates",
    "volume",
    "light",
    "ahead",
    "of",
    "the",
    "fed",
    "decision",
    "traders",
    "said",
];

/// The message with sequence number `seq`: `MESSAGE_LEN` bytes of ASCII.
pub fn message(seq: u32) -> Vec<u8> {
    let mut rng = SplitMix(u64::from(seq).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32);
    let mut s = String::with_capacity(MESSAGE_LEN + 256);
    s.push_str(&format!(
        "{{\"seq\":\"{seq:0SEQ_DIGITS$}\",\"type\":\"quotes\",\"ts\":{},\"source\":\"feed-{}\",\
         \"items\":[",
        1_700_000_000_000 + u64::from(seq) * 7 + rng.below(5),
        rng.below(8)
    ));
    // Items while there is room for one more (an item is under 260 bytes) and the tail.
    let mut first = true;
    while s.len() < MESSAGE_LEN - 300 {
        if !first {
            s.push(',');
        }
        first = false;
        let bid = 10_000 + rng.below(90_000_000);
        let spread = 1 + rng.below(40);
        let tags: Vec<String> = (0..rng.below(3))
            .map(|_| format!("\"{}\"", TAGS[rng.below(TAGS.len() as u64) as usize]))
            .collect();
        s.push_str(&format!(
            "{{\"id\":{},\"symbol\":\"{}\",\"bid\":{}.{:02},\"ask\":{}.{:02},\"size\":{},\
             \"venue\":\"{}\",\"side\":\"{}\",\"trader\":\"t-{:04}\",\"tags\":[{}]}}",
            rng.below(10_000_000),
            SYMBOLS[rng.below(SYMBOLS.len() as u64) as usize],
            bid / 100,
            bid % 100,
            (bid + spread) / 100,
            (bid + spread) % 100,
            100 * (1 + rng.below(50)),
            VENUES[rng.below(VENUES.len() as u64) as usize],
            SIDES[rng.below(2) as usize],
            rng.below(10_000),
            tags.join(",")
        ));
    }
    // A free-text note fills the message to its exact length.
    s.push_str("],\"note\":\"");
    let room = MESSAGE_LEN - s.len() - 2;
    let mut note = String::with_capacity(room + 16);
    while note.len() < room {
        if !note.is_empty() {
            note.push(' ');
        }
        note.push_str(WORDS[rng.below(WORDS.len() as u64) as usize]);
    }
    note.truncate(room);
    s.push_str(&note);
    s.push_str("\"}");
    debug_assert_eq!(s.len(), MESSAGE_LEN);
    s.into_bytes()
}

/// The sequence number of a message made by [`message`], if it looks like one.
pub fn seq_of(payload: &[u8]) -> Option<u32> {
    let digits = payload.strip_prefix(SEQ_PREFIX)?.get(..SEQ_DIGITS)?;
    digits
        .iter()
        .try_fold(0u64, |acc, &b| {
            let digit = b.wrapping_sub(b'0');
            (digit < 10).then(|| acc * 10 + u64::from(digit))
        })
        .and_then(|seq| u32::try_from(seq).ok())
}

/// A small deterministic generator (SplitMix64).
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0; the bias is negligible for the small n used here).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}
