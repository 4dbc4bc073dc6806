//! `bootseer-ckpt`: see the library's crate doc.

fn main() -> std::process::ExitCode {
    bootseer_ckpt::run()
}
