use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    hapod_node::cli::main(hapod_node::cli::Args::parse()).await
}
