//! The embedded eBPF object, read as an ELF file without the kernel: it defines exactly the maps
//! and programs `policy_common::names` lists, under a license the kernel accepts. Runs without
//! root, so a misnamed map or program fails `cargo test` rather than the first privileged load.

use std::collections::BTreeSet;

use aya_obj::Object;
use policy_common::names::{ALL_MAPS, ALL_PROGRAMS};

fn object() -> Object {
    Object::parse(policy_agent::EBPF_OBJECT).expect("the embedded object parses")
}

#[test]
fn object_defines_exactly_the_named_maps() {
    // Sections the compiler emits for statics (`.rodata`, `.bss`, `.data`) are maps to the
    // loader too, named after their section; they are not maps the agent opens by name.
    let defined: BTreeSet<String> = object()
        .maps
        .into_keys()
        .filter(|name| !name.starts_with('.'))
        .collect();
    let named: BTreeSet<String> = ALL_MAPS.iter().map(|&name| name.to_owned()).collect();
    assert_eq!(
        defined, named,
        "maps in the object (left) against policy_common::names::ALL_MAPS (right)"
    );
}

#[test]
fn object_defines_exactly_the_named_programs() {
    let defined: BTreeSet<String> = object().programs.into_keys().collect();
    let named: BTreeSet<String> = ALL_PROGRAMS.iter().map(|&name| name.to_owned()).collect();
    assert_eq!(
        defined, named,
        "programs in the object (left) against policy_common::names::ALL_PROGRAMS (right)"
    );
}

/// The license strings the kernel treats as GPL-compatible (`license_is_gpl_compatible` in
/// `include/linux/license.h`): only programs under one of them may call GPL-only helpers.
const GPL_COMPATIBLE: [&str; 6] = [
    "GPL",
    "GPL v2",
    "GPL and additional rights",
    "Dual BSD/GPL",
    "Dual MIT/GPL",
    "Dual MPL/GPL",
];

#[test]
fn object_license_is_the_one_the_readme_states_and_gpl_compatible() {
    let object = object();
    let license = object.license.to_str().expect("the license is UTF-8");
    assert_eq!(
        license, "Dual MIT/GPL",
        "the README's License section says so"
    );
    assert!(GPL_COMPATIBLE.contains(&license), "{license:?}");
}
