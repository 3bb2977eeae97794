//! The endpoint demultiplexes every datagram from the network: arbitrary bytes from arbitrary
//! addresses must never panic, and must never make an address speak for a session.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    dais_media::fuzzing::endpoint(data);
});
