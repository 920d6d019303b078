//! GPU discovery: which GPUs this node offers to runs (`ladder agent --gpus`).
//!
//! [`GpuSelection::parse`] reads the `--gpus` value, [`discover`] asks `nvidia-smi`
//! (the only I/O here), [`parse_nvidia_smi`] turns its CSV into [`Gpu`]s, and
//! [`select`] applies the selection to what was discovered. Parsing and selection are
//! pure so that they are tested without a GPU.

use ladder_types::Gpu;
use thiserror::Error;
use tracing::info;

/// The `nvidia-smi` arguments whose output [`parse_nvidia_smi`] reads.
pub const NVIDIA_SMI_ARGS: &[&str] = &[
    "--query-gpu=index,uuid,name,memory.total",
    "--format=csv,noheader,nounits",
];

#[derive(Debug, Error, PartialEq, Eq)]
pub enum GpuError {
    #[error(
        "invalid --gpus value {value:?}: {message} (expected auto, none, a list of indexes like 0,1,3, or fake:N)"
    )]
    InvalidSelection { value: String, message: String },
    #[error("nvidia-smi output line {line}: {message}: {text:?}")]
    MalformedOutput {
        line: usize,
        text: String,
        message: String,
    },
    #[error("--gpus asks for GPU {index}, but this node has only GPUs {present}")]
    MissingIndex { index: u32, present: String },
}

/// What `--gpus` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GpuSelection {
    /// Every GPU `nvidia-smi` reports; none when there is no driver.
    Auto,
    /// A CPU-only agent.
    None,
    /// Only these indexes (as `nvidia-smi` numbers them), in the given order.
    Indexes(Vec<u32>),
    /// N fake GPUs named "fake", for tests and demos on machines without GPUs: runs get
    /// `CUDA_VISIBLE_DEVICES` and the torchrun variables as on a real node.
    Fake(u32),
}

impl GpuSelection {
    pub fn parse(value: &str) -> Result<GpuSelection, GpuError> {
        let invalid = |message: String| GpuError::InvalidSelection {
            value: value.to_string(),
            message,
        };
        let trimmed = value.trim();
        match trimmed {
            "auto" => return Ok(GpuSelection::Auto),
            "none" => return Ok(GpuSelection::None),
            "" => return Err(invalid("it is empty".into())),
            _ => {}
        }
        if let Some(count) = trimmed.strip_prefix("fake:") {
            let count: u32 = count
                .trim()
                .parse()
                .map_err(|_| invalid(format!("{count:?} is not a number of fake GPUs")))?;
            if count == 0 {
                return Err(invalid("fake:0 has no GPUs; use none".into()));
            }
            return Ok(GpuSelection::Fake(count));
        }
        let mut indexes = Vec::new();
        for part in trimmed.split(',') {
            let part = part.trim();
            let index: u32 = part
                .parse()
                .map_err(|_| invalid(format!("{part:?} is not a GPU index")))?;
            if indexes.contains(&index) {
                return Err(invalid(format!("GPU {index} is listed twice")));
            }
            indexes.push(index);
        }
        Ok(GpuSelection::Indexes(indexes))
    }
}

/// Parses `nvidia-smi --query-gpu=index,uuid,name,memory.total
/// --format=csv,noheader,nounits`: one `index, uuid, name, memory MiB` line per GPU.
/// Blank lines are skipped; anything else malformed is an error naming the line.
pub fn parse_nvidia_smi(output: &str) -> Result<Vec<Gpu>, GpuError> {
    let mut gpus: Vec<Gpu> = Vec::new();
    for (number, line) in output.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let malformed = |message: &str| GpuError::MalformedOutput {
            line: number + 1,
            text: line.to_string(),
            message: message.to_string(),
        };
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        // A GPU name may itself contain commas: the first two and the last field are fixed.
        if fields.len() < 4 {
            return Err(malformed(
                "expected 4 comma-separated fields (index, uuid, name, memory)",
            ));
        }
        let index: u32 = fields[0]
            .parse()
            .map_err(|_| malformed("the index is not a number"))?;
        let uuid = fields[1].to_string();
        if uuid.is_empty() {
            return Err(malformed("the uuid is empty"));
        }
        let name = fields[2..fields.len() - 1].join(", ");
        let memory_mib: u64 = fields[fields.len() - 1]
            .parse()
            .map_err(|_| malformed("the memory is not a number of MiB"))?;
        if gpus.iter().any(|gpu| gpu.index == index) {
            return Err(malformed("the index is listed twice"));
        }
        gpus.push(Gpu {
            index,
            uuid,
            name,
            memory_mib,
        });
    }
    Ok(gpus)
}

/// N fake GPUs, indexes 0..N.
pub fn fake_gpus(count: u32) -> Vec<Gpu> {
    (0..count)
        .map(|index| Gpu {
            index,
            uuid: format!("fake-{index}"),
            name: "fake".into(),
            memory_mib: 0,
        })
        .collect()
}

/// Applies `selection` to the GPUs `nvidia-smi` reported (`None`: it could not be run).
pub fn select(selection: &GpuSelection, discovered: Option<&[Gpu]>) -> Result<Vec<Gpu>, GpuError> {
    match selection {
        GpuSelection::None => Ok(Vec::new()),
        GpuSelection::Fake(count) => Ok(fake_gpus(*count)),
        GpuSelection::Auto => Ok(discovered.map(<[Gpu]>::to_vec).unwrap_or_default()),
        GpuSelection::Indexes(indexes) => {
            let Some(discovered) = discovered else {
                // No nvidia-smi to ask (a container without it, say): trust the list.
                return Ok(indexes
                    .iter()
                    .map(|&index| Gpu {
                        index,
                        uuid: String::new(),
                        name: "unknown".into(),
                        memory_mib: 0,
                    })
                    .collect());
            };
            let mut chosen = Vec::new();
            for &index in indexes {
                let Some(gpu) = discovered.iter().find(|gpu| gpu.index == index) else {
                    let present: Vec<String> =
                        discovered.iter().map(|gpu| gpu.index.to_string()).collect();
                    let present = if present.is_empty() {
                        "(none)".to_string()
                    } else {
                        present.join(",")
                    };
                    return Err(GpuError::MissingIndex { index, present });
                };
                chosen.push(gpu.clone());
            }
            Ok(chosen)
        }
    }
}

/// Runs `nvidia-smi`; `Ok(None)` when it is missing or fails (no driver, no GPU), with
/// an info log saying why. Blocking: call it before the runtime is busy, or through
/// `spawn_blocking`.
pub fn discover() -> Result<Option<Vec<Gpu>>, GpuError> {
    let output = match std::process::Command::new("nvidia-smi")
        .args(NVIDIA_SMI_ARGS)
        .output()
    {
        Ok(output) => output,
        Err(error) => {
            info!(%error, "no GPUs found: cannot run nvidia-smi");
            return Ok(None);
        }
    };
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        info!(status = %output.status, stderr = %stderr.trim(), "no GPUs found: nvidia-smi failed");
        return Ok(None);
    }
    parse_nvidia_smi(&String::from_utf8_lossy(&output.stdout)).map(Some)
}

/// Resolves `--gpus` into this node's GPUs, asking `nvidia-smi` only when needed.
pub fn resolve(selection: &GpuSelection) -> Result<Vec<Gpu>, GpuError> {
    let discovered = match selection {
        GpuSelection::Auto | GpuSelection::Indexes(_) => discover()?,
        GpuSelection::None | GpuSelection::Fake(_) => None,
    };
    select(selection, discovered.as_deref())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO_H100: &str = "0, GPU-1a2b, NVIDIA H100 80GB HBM3, 81559\n\
                            1, GPU-3c4d, NVIDIA H100 80GB HBM3, 81559\n";

    #[test]
    fn parses_nvidia_smi_lines() {
        let gpus = parse_nvidia_smi(TWO_H100).unwrap();
        assert_eq!(gpus.len(), 2);
        assert_eq!(
            gpus[1],
            Gpu {
                index: 1,
                uuid: "GPU-3c4d".into(),
                name: "NVIDIA H100 80GB HBM3".into(),
                memory_mib: 81559
            }
        );
        assert_eq!(parse_nvidia_smi("").unwrap(), Vec::new());
        assert_eq!(parse_nvidia_smi("\n  \n").unwrap(), Vec::new());
        let comma = parse_nvidia_smi("3, GPU-x, Odd, Name, 1024\r\n").unwrap();
        assert_eq!(comma[0].name, "Odd, Name");
        assert_eq!(comma[0].index, 3);
    }

    #[test]
    fn malformed_nvidia_smi_output_names_the_line() {
        let cases = [
            ("0, GPU-a, H100\n", 1, "expected 4"),
            (
                "0, GPU-a, H100, 80\nx, GPU-b, H100, 80\n",
                2,
                "index is not a number",
            ),
            ("0, GPU-a, H100, [N/A]\n", 1, "memory is not a number"),
            ("0, , H100, 80\n", 1, "uuid is empty"),
            (
                "0, GPU-a, H100, 80\n0, GPU-b, H100, 80\n",
                2,
                "listed twice",
            ),
            (
                "NVIDIA-SMI has failed because it couldn't communicate\n",
                1,
                "expected 4",
            ),
        ];
        for (output, line, message) in cases {
            let error = parse_nvidia_smi(output).unwrap_err();
            let GpuError::MalformedOutput { line: got, .. } = &error else {
                panic!("{error:?}");
            };
            assert_eq!(*got, line, "{output:?}");
            assert!(error.to_string().contains(message), "{error}");
        }
    }

    #[test]
    fn parses_selections() {
        assert_eq!(GpuSelection::parse("auto").unwrap(), GpuSelection::Auto);
        assert_eq!(GpuSelection::parse("none").unwrap(), GpuSelection::None);
        assert_eq!(
            GpuSelection::parse("0, 1,3").unwrap(),
            GpuSelection::Indexes(vec![0, 1, 3])
        );
        assert_eq!(
            GpuSelection::parse("fake:8").unwrap(),
            GpuSelection::Fake(8)
        );
        for (bad, message) in [
            ("", "empty"),
            ("0,,1", "\"\" is not a GPU index"),
            ("a", "\"a\" is not a GPU index"),
            ("-1", "not a GPU index"),
            ("1,1", "listed twice"),
            ("fake:x", "not a number of fake GPUs"),
            ("fake:0", "use none"),
        ] {
            let error = GpuSelection::parse(bad).unwrap_err().to_string();
            assert!(error.contains(message), "{bad:?}: {error}");
            assert!(error.contains("expected auto, none"), "{error}");
        }
    }

    #[test]
    fn selects_from_what_was_discovered() {
        let discovered = parse_nvidia_smi(TWO_H100).unwrap();
        let all = select(&GpuSelection::Auto, Some(&discovered)).unwrap();
        assert_eq!(all, discovered);
        assert!(select(&GpuSelection::Auto, None).unwrap().is_empty());
        assert!(select(&GpuSelection::None, Some(&discovered))
            .unwrap()
            .is_empty());
        let one = select(&GpuSelection::Indexes(vec![1]), Some(&discovered)).unwrap();
        assert_eq!(one, vec![discovered[1].clone()]);
        let error = select(&GpuSelection::Indexes(vec![0, 3]), Some(&discovered)).unwrap_err();
        assert_eq!(
            error,
            GpuError::MissingIndex {
                index: 3,
                present: "0,1".into()
            }
        );
        let trusted = select(&GpuSelection::Indexes(vec![2, 5]), None).unwrap();
        assert_eq!(
            trusted.iter().map(|g| g.index).collect::<Vec<_>>(),
            vec![2, 5]
        );
        assert_eq!(trusted[0].name, "unknown");
        let fake = select(&GpuSelection::Fake(3), None).unwrap();
        assert_eq!(fake.len(), 3);
        assert!(fake.iter().all(|g| g.name == "fake"));
        assert_eq!(fake[2].index, 2);
    }
}
