//! `metalvirt-manpage`: writes `metalvirtd(8)` (roff) to standard output, generated from the
//! daemon's command-line definition. Used by `packaging/build-deb.sh`.

use std::io::Write;

fn main() {
    let page = metalvirt::cli::manual_page().expect("rendering the manual page");
    if let Err(e) = std::io::stdout().write_all(&page) {
        eprintln!("metalvirt-manpage: {e}");
        std::process::exit(1);
    }
}
