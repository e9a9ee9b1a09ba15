//! The `photofinish` command line: a thin client of the library's public API.
//!
//! `photofinish devices` lists the Vulkan devices, their queue families and timestamp
//! support (`--json` for a machine-readable form). `photofinish run` is the main job:
//! the built-in workloads through the engine, then a table (or `--json`) and optionally
//! a report directory; it lives in `cli/`. Errors print one clear line on
//! stderr and exit non-zero; nothing here panics on bad input or a missing driver.

use std::io::Write;
use std::process::ExitCode;

mod cli;

use clap::{Parser, Subcommand, ValueEnum};
use photofinish::backend::{Backend, BackendError, DeviceInfo, QueueId};

/// A multi-threaded GPU dispatch engine that races speculative kernel variants on
/// parallel Vulkan queues and learns the winner online.
#[derive(Debug, Parser)]
#[command(name = "photofinish", version, about)]
struct Cli {
    /// Which backend to use: Vulkan where a driver and device exist (auto), Vulkan
    /// only (vulkan), or the CPU backend (cpu).
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto, global = true)]
    backend: BackendChoice,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum BackendChoice {
    Auto,
    Vulkan,
    Cpu,
}

impl From<BackendChoice> for photofinish::BackendChoice {
    fn from(choice: BackendChoice) -> Self {
        match choice {
            BackendChoice::Auto => photofinish::BackendChoice::Auto,
            BackendChoice::Vulkan => photofinish::BackendChoice::Vulkan,
            BackendChoice::Cpu => photofinish::BackendChoice::Cpu,
        }
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List the Vulkan devices: queue families, queues opened, timestamp support.
    Devices {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Run the built-in workloads through the engine: race each kernel's variants,
    /// reach a verdict, then print a table per kernel (or JSON) and optionally write a
    /// report directory with charts.
    Run(cli::RunArgs),
}

/// Why a command failed; printed as one line, exit code 1.
#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error("`devices` lists Vulkan devices; the CPU backend has none (drop `--backend cpu`)")]
    DevicesOnCpu,
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("writing the output failed: {0}")]
    Output(#[from] std::io::Error),
    #[error("encoding JSON failed: {0}")]
    Json(#[from] serde_json::Error),
    #[error(transparent)]
    Run(#[from] cli::RunError),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // A write to a full or closed stderr is dropped: its error report would be an
        // `eprintln!`, which panics there.
        .log_internal_errors(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .try_init();
    let result = match cli.command {
        Command::Devices { json } => devices(cli.backend, json),
        Command::Run(args) => cli::run(&args, cli.backend.into()).map_err(CliError::from),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // A closed pipe (`photofinish devices | head`) is not an error worth a message.
        Err(CliError::Output(e)) | Err(CliError::Run(cli::RunError::Output(e)))
            if e.kind() == std::io::ErrorKind::BrokenPipe =>
        {
            ExitCode::SUCCESS
        }
        Err(e) => {
            // `writeln!`, not `eprintln!`: a full or closed stderr must not panic. The
            // exit code still says it failed.
            let _ = writeln!(std::io::stderr(), "photofinish: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn devices(choice: BackendChoice, json: bool) -> Result<(), CliError> {
    if choice == BackendChoice::Cpu {
        return Err(CliError::DevicesOnCpu);
    }
    let mut out = std::io::stdout().lock();
    let backend = match photofinish::backend::vulkan::VulkanBackend::new() {
        Ok(b) => b,
        // Under `auto`, no Vulkan is a fact to report, not a failure: `run` would fall
        // back to the CPU backend.
        Err(e @ BackendError::NoDevice(_)) if choice == BackendChoice::Auto => {
            if json {
                let value = serde_json::json!({ "devices": [], "vulkan_error": e.to_string() });
                writeln!(out, "{}", serde_json::to_string_pretty(&value)?)?;
            } else {
                writeln!(out, "No Vulkan device: {e}")?;
                writeln!(out, "(`photofinish run` would use the CPU backend.)")?;
            }
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    };
    if json {
        let devices = backend
            .devices()
            .iter()
            .map(|d| device_json(d, backend.queues()))
            .collect::<Result<Vec<_>, _>>()?;
        let value = serde_json::json!({ "devices": devices });
        writeln!(out, "{}", serde_json::to_string_pretty(&value)?)?;
    } else {
        for d in backend.devices() {
            write_device(&mut out, d)?;
        }
    }
    Ok(())
}

fn uuid(bytes: &[u8; 16]) -> String {
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

fn device_json(d: &DeviceInfo, queues: &[QueueId]) -> Result<serde_json::Value, CliError> {
    let mut value = serde_json::to_value(d)?;
    if let Some(obj) = value.as_object_mut() {
        obj.insert("device_uuid".into(), uuid(&d.device_uuid).into());
        let mine: Vec<&QueueId> = queues.iter().filter(|q| q.device == d.index).collect();
        obj.insert("queues".into(), serde_json::to_value(mine)?);
    }
    Ok(value)
}

fn write_device(out: &mut impl Write, d: &DeviceInfo) -> Result<(), CliError> {
    writeln!(out, "device {}: {}", d.index, d.name)?;
    writeln!(out, "  type:             {}", d.device_type)?;
    writeln!(out, "  adapter id:       {}", d.adapter_id)?;
    writeln!(out, "  uuid:             {}", uuid(&d.device_uuid))?;
    writeln!(out, "  driver:           {}", d.driver_version)?;
    writeln!(out, "  timestamp period: {} ns", d.timestamp_period_ns)?;
    match d.limits.subgroup_size {
        Some(n) => writeln!(out, "  subgroup size:    {n}")?,
        None => writeln!(out, "  subgroup size:    unknown")?,
    }
    writeln!(
        out,
        "  max workgroups:   {:?} (size {:?}, {} invocations)",
        d.limits.max_workgroup_count,
        d.limits.max_workgroup_size,
        d.limits.max_workgroup_invocations
    )?;
    writeln!(out, "  queue families:")?;
    writeln!(
        out,
        "    {:<7} {:<7} {:<7} {:<26} timestamp bits",
        "family", "queues", "opened", "flags"
    )?;
    for f in &d.queue_families {
        let flags: Vec<&str> = [
            (f.compute, "compute"),
            (f.graphics, "graphics"),
            (f.transfer, "transfer"),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, name)| *name)
        .collect();
        let flags = if flags.is_empty() {
            "-".to_string()
        } else {
            flags.join(" ")
        };
        let stamps = if f.timestamp_valid_bits == 0 {
            "none".to_string()
        } else {
            f.timestamp_valid_bits.to_string()
        };
        writeln!(
            out,
            "    {:<7} {:<7} {:<7} {:<26} {}",
            f.index, f.queue_count, f.opened, flags, stamps
        )?;
    }
    Ok(())
}
