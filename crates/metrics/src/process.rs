//! The process's figures from /proc (zero where they cannot be read, e.g. off Linux).

/// One reading of the process.
pub(crate) struct Process {
    pub resident_memory_bytes: u64,
    pub open_fds: u64,
    pub max_fds: u64,
}

impl Process {
    pub fn read() -> Process {
        Process {
            resident_memory_bytes: warren_core::overview::resident_memory_bytes().unwrap_or(0),
            open_fds: warren_core::overview::open_file_descriptors().unwrap_or(0),
            max_fds: max_fds().unwrap_or(0),
        }
    }
}

/// The soft limit on open files ("Max open files" in /proc/self/limits).
fn max_fds() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    parse_max_open_files(&limits)
}

fn parse_max_open_files(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line["Max open files".len()..].split_whitespace().next()?;
    match soft {
        "unlimited" => Some(u64::MAX),
        n => n.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn max_open_files_is_the_soft_limit() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max processes             63398                63398                processes\n\
                      Max open files            1024                 524288               files\n";
        assert_eq!(super::parse_max_open_files(limits), Some(1024));
    }
}
