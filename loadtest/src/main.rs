//! Load generator for ssekify (grows with the load-testing issue).

fn main() {
    eprintln!("ssekify-loadtest: scenarios land with the load-testing issue; see loadtest/README.md");
    std::process::exit(2);
}
