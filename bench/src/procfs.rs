//! Process figures from /proc (server RSS and CPU) and getrusage (our own CPU), plus the
//! file-descriptor limit.

/// Resident set size of `pid` in bytes (`VmRSS` of /proc/PID/status).
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// utime + stime of `pid` in seconds (fields 14 and 15 of /proc/PID/stat).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: split after the last ')'.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state), so field N is f[N - 3].
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Some((utime + stime) as f64 / tick.max(1) as f64)
}

/// Σ `VmRSS` over several processes (the nodes of one service); None if any is gone.
pub fn rss_bytes_sum(pids: &[u32]) -> Option<u64> {
    pids.iter().map(|&p| rss_bytes(p)).sum()
}

/// Σ utime + stime over several processes (the nodes of one service); None if any is gone.
pub fn cpu_seconds_sum(pids: &[u32]) -> Option<f64> {
    pids.iter().map(|&p| cpu_seconds(p)).sum()
}

/// The 1-minute load average (/proc/loadavg), to judge how quiet the machine was.
pub fn loadavg_1m() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// user + system CPU seconds of this process, all threads.
pub fn self_cpu_seconds() -> f64 {
    let (u, s) = self_cpu_user_sys();
    u + s
}

/// (user, system) CPU seconds of this process, all threads.
pub fn self_cpu_user_sys() -> (f64, f64) {
    // SAFETY: getrusage only writes into the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (tv(ru.ru_utime), tv(ru.ru_stime))
}

/// Raises RLIMIT_NOFILE to at least `want` (raising the hard limit too when allowed, as
/// root may), else as high as the hard limit. Returns the soft limit now in force.
pub fn raise_nofile(want: u64) -> u64 {
    // SAFETY: plain get/setrlimit on a struct we own.
    unsafe {
        let mut rl: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) != 0 {
            return 0;
        }
        if rl.rlim_cur >= want {
            return rl.rlim_cur;
        }
        if rl.rlim_max < want {
            let raised = libc::rlimit {
                rlim_cur: want,
                rlim_max: want,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                return want;
            }
        }
        rl.rlim_cur = rl.rlim_max.min(want.max(rl.rlim_cur));
        libc::setrlimit(libc::RLIMIT_NOFILE, &rl);
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl);
        rl.rlim_cur
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_own_process() {
        let pid = std::process::id();
        assert!(super::rss_bytes(pid).unwrap() > 0);
        assert!(super::cpu_seconds(pid).unwrap() >= 0.0);
        assert!(super::self_cpu_seconds() >= 0.0);
    }

    #[test]
    fn sums_over_processes() {
        let pid = std::process::id();
        let one = super::rss_bytes(pid).unwrap();
        // RSS may move a little between the reads; both reads see this very process.
        let two = super::rss_bytes_sum(&[pid, pid]).unwrap();
        assert!(two.abs_diff(2 * one) <= 1 << 20, "{one} {two}");
        assert!(super::cpu_seconds_sum(&[pid, pid]).unwrap() >= 0.0);
        assert_eq!(super::cpu_seconds_sum(&[]), Some(0.0));
        // A pid that cannot exist (above pid_max) makes the sum unknown.
        assert_eq!(super::cpu_seconds_sum(&[pid, u32::MAX]), None);
        assert_eq!(super::rss_bytes_sum(&[pid, u32::MAX]), None);
    }
}
