#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Some(t) = cairn_fuzz_targets::target("small_files") {
        (t.run)(data);
    }
});
