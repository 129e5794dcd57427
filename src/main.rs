fn main() -> std::process::ExitCode {
    s3vol::cli::main()
}
