//! The `photofinish` command line: a thin client of the library's public API.

mod cli;

fn main() {
    eprintln!("photofinish: the command line is being written");
    std::process::exit(2);
}
