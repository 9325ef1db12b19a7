//! `netns-nat`: the command line (`cli`); the work is in the library.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
