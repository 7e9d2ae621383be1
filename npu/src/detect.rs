//! Detection of a real AMD XDNA NPU, and what mixq can do with it today.
//!
//! Linux exposes the NPU through the `amdxdna` accel driver (in mainline since 6.14, earlier
//! out of tree as amd/xdna-driver): a node `/dev/accel/accelN`, its class directory
//! `/sys/class/accel/accelN` whose `device` link is the PCI function (vendor 0x1022; device
//! 0x1502 Phoenix/Hawk Point, 0x17f0 Strix/Krackan, 0x17f1/0x17f2 later XDNA2 parts), and
//! firmware files `/lib/firmware/amdnpu/<device>_<revision>/npu.sbin` (the driver's
//! `MODULE_FIRMWARE` list). The firmware version itself is reported by the driver through an
//! ioctl (`DRM_AMDXDNA_QUERY_FIRMWARE_VERSION`), which we do not issue: we report a sysfs
//! `fw_version` attribute when one exists, and the firmware files present.
//!
//! Detection never fails: what cannot be read becomes a note.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

/// One accel device (or an NPU PCI function without a driver).
#[derive(Debug, Clone, PartialEq)]
pub struct NpuDevice {
    /// Device node, e.g. `/dev/accel/accel0` (None: no driver bound, so no node).
    pub node: Option<PathBuf>,
    /// The PCI function's sysfs directory.
    pub sysfs: PathBuf,
    /// Bound driver (`amdxdna` for an XDNA NPU).
    pub driver: Option<String>,
    pub pci_vendor: Option<u16>,
    pub pci_device: Option<u16>,
    pub pci_revision: Option<u8>,
    /// `Phoenix / Hawk Point (XDNA)`, `Strix / Krackan (XDNA2)`, ... from the PCI IDs.
    pub family: Option<&'static str>,
    /// A sysfs firmware-version attribute, when the driver exposes one.
    pub firmware_version: Option<String>,
    /// Firmware images installed for this device.
    pub firmware_files: Vec<PathBuf>,
}

impl NpuDevice {
    /// An AMD XDNA NPU (by PCI IDs), whatever driver is bound.
    pub fn is_xdna(&self) -> bool {
        self.family.is_some()
    }

    /// First generation XDNA (Phoenix / Hawk Point), the NPU the engine model describes.
    pub fn is_phoenix_class(&self) -> bool {
        self.pci_vendor == Some(0x1022) && self.pci_device == Some(0x1502)
    }
}

/// What [`detect`] found.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct NpuDetection {
    /// XDNA NPUs found (bound to `amdxdna` or not), and other accel devices.
    pub devices: Vec<NpuDevice>,
    /// `/sys/module/amdxdna` exists.
    pub driver_loaded: bool,
    /// `/sys/module/amdxdna/version` (out-of-tree builds set it).
    pub driver_version: Option<String>,
    /// Things that could not be read, and other remarks.
    pub notes: Vec<String>,
}

impl NpuDetection {
    /// Whether an XDNA NPU is present with the `amdxdna` driver bound.
    pub fn present(&self) -> bool {
        self.devices
            .iter()
            .any(|d| d.is_xdna() && d.driver.as_deref() == Some("amdxdna"))
    }

    /// One line: "no XDNA device" or the device found.
    pub fn summary(&self) -> String {
        let xdna: Vec<&NpuDevice> = self.devices.iter().filter(|d| d.is_xdna()).collect();
        match xdna.first() {
            None => "no XDNA device".to_string(),
            Some(d) => format!(
                "{} at {} (driver {}, firmware {})",
                d.family.unwrap_or("XDNA"),
                d.node.as_ref().map_or_else(
                    || d.sysfs.display().to_string(),
                    |n| n.display().to_string()
                ),
                d.driver.as_deref().unwrap_or("none bound"),
                d.firmware_version.clone().unwrap_or_else(|| {
                    if d.firmware_files.is_empty() {
                        "not installed".into()
                    } else {
                        format!("file {}", d.firmware_files[0].display())
                    }
                })
            ),
        }
    }

    /// What mixq can do with what was found, stated plainly.
    pub fn can_do_today(&self) -> String {
        let emulated = "the NPU's share (attention) runs on the CPU through mixq's engine model: \
                        the same W4ABF16 arithmetic the NPU kernels are defined to use, plus a \
                        predicted NPU time";
        let xdna: Vec<&NpuDevice> = self.devices.iter().filter(|d| d.is_xdna()).collect();
        let Some(d) = xdna.first() else {
            return format!("No XDNA NPU on this machine; {emulated}.");
        };
        let mut s = String::new();
        if d.driver.as_deref() != Some("amdxdna") {
            s.push_str(
                "An XDNA NPU is present but the amdxdna driver is not bound to it (Linux 6.14+ \
                 or amd/xdna-driver is needed). ",
            );
        }
        s.push_str(
            "mixq cannot execute anything on it: it ships no AIE kernels (xclbin) and links no \
             XRT runtime, and none have ever been tested on hardware. ",
        );
        if d.is_phoenix_class() {
            s.push_str(
                "For this Phoenix/Hawk Point NPU no public runtime runs LLMs either (AMD's hybrid \
                 flow and FastFlowLM support XDNA2 only). ",
            );
        } else {
            s.push_str(
                "This is an XDNA2 part: AMD's Ryzen AI software or FastFlowLM can run LLMs on it, \
                 outside mixq. ",
            );
        }
        s.push_str(&format!("Today {emulated}."));
        s
    }
}

impl fmt::Display for NpuDetection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "NPU: {}", self.summary())?;
        for d in &self.devices {
            writeln!(
                f,
                "  {}  pci {:04x}:{:04x} rev {}  driver {}  {}",
                d.node
                    .as_ref()
                    .map_or_else(|| "(no node)".to_string(), |n| n.display().to_string()),
                d.pci_vendor.unwrap_or(0),
                d.pci_device.unwrap_or(0),
                d.pci_revision
                    .map_or("?".to_string(), |r| format!("{r:02x}")),
                d.driver.as_deref().unwrap_or("none"),
                d.family.unwrap_or("not an XDNA NPU"),
            )?;
            if let Some(v) = &d.firmware_version {
                writeln!(f, "    firmware version {v}")?;
            }
            for p in &d.firmware_files {
                writeln!(f, "    firmware file {}", p.display())?;
            }
        }
        writeln!(
            f,
            "  amdxdna module: {}",
            match (self.driver_loaded, &self.driver_version) {
                (false, _) => "not loaded".to_string(),
                (true, Some(v)) => format!("loaded, version {v}"),
                (true, None) => "loaded".to_string(),
            }
        )?;
        for n in &self.notes {
            writeln!(f, "  note: {n}")?;
        }
        write!(f, "  mixq today: {}", self.can_do_today())
    }
}

/// The family of an AMD NPU PCI function, by (vendor, device).
pub fn family_of(vendor: u16, device: u16) -> Option<&'static str> {
    match (vendor, device) {
        (0x1022, 0x1502) => Some("Phoenix / Hawk Point (XDNA)"),
        (0x1022, 0x17f0) => Some("Strix / Krackan (XDNA2)"),
        (0x1022, 0x17f1) | (0x1022, 0x17f2) => Some("XDNA2"),
        _ => None,
    }
}

/// Looks for an XDNA NPU on this machine (reads `/dev`, `/sys`, `/lib/firmware`).
pub fn detect() -> NpuDetection {
    detect_at(Path::new("/"))
}

/// [`detect`] under another root directory (tests build fake sysfs trees).
pub fn detect_at(root: &Path) -> NpuDetection {
    let mut out = NpuDetection::default();
    let module = root.join("sys/module/amdxdna");
    out.driver_loaded = module.is_dir();
    out.driver_version = read_trim(&module.join("version"));

    let mut seen_pci: Vec<PathBuf> = Vec::new();
    // 1. accel class devices: the nodes a runtime would open
    let class = root.join("sys/class/accel");
    if let Ok(rd) = fs::read_dir(&class) {
        let mut names: Vec<String> = rd
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("accel"))
            .collect();
        names.sort();
        for name in names {
            let dev_dir = class.join(&name).join("device");
            let pci = fs::canonicalize(&dev_dir).unwrap_or(dev_dir.clone());
            let mut d = pci_device(root, &pci);
            let node = root.join("dev/accel").join(&name);
            if node.exists() {
                d.node = Some(node);
            } else {
                out.notes.push(format!(
                    "{} has no device node {}",
                    class.join(&name).display(),
                    node.display()
                ));
            }
            seen_pci.push(pci);
            out.devices.push(d);
        }
    }
    // 2. NPU PCI functions with no accel device (driver missing or not bound)
    if let Ok(rd) = fs::read_dir(root.join("sys/bus/pci/devices")) {
        let mut paths: Vec<PathBuf> = rd.filter_map(|e| e.ok()).map(|e| e.path()).collect();
        paths.sort();
        for p in paths {
            let canon = fs::canonicalize(&p).unwrap_or(p.clone());
            if seen_pci.contains(&canon) {
                continue;
            }
            let (Some(v), Some(dv)) = (read_hex(&p.join("vendor")), read_hex(&p.join("device")))
            else {
                continue;
            };
            if family_of(v as u16, dv as u16).is_some() {
                out.devices.push(pci_device(root, &p));
            }
        }
    }
    if !root.join("dev/accel").exists() && out.devices.is_empty() {
        out.notes
            .push("no /dev/accel directory (no accel driver loaded)".to_string());
    }
    out
}

fn pci_device(root: &Path, pci: &Path) -> NpuDevice {
    let vendor = read_hex(&pci.join("vendor")).map(|v| v as u16);
    let device = read_hex(&pci.join("device")).map(|v| v as u16);
    let revision = read_hex(&pci.join("revision")).map(|v| v as u8);
    let driver = fs::read_link(pci.join("driver"))
        .ok()
        .and_then(|l| l.file_name().map(|n| n.to_string_lossy().into_owned()));
    let family = match (vendor, device) {
        (Some(v), Some(d)) => family_of(v, d),
        _ => None,
    };
    let firmware_version = ["fw_version", "firmware_version"]
        .iter()
        .find_map(|a| read_trim(&pci.join(a)));
    let mut firmware_files = Vec::new();
    if let (Some(d), Some(r)) = (device, revision) {
        let dir = root.join(format!("lib/firmware/amdnpu/{d:04x}_{r:02x}"));
        if let Ok(rd) = fs::read_dir(&dir) {
            let mut files: Vec<PathBuf> = rd
                .filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with("npu"))
                })
                .collect();
            files.sort();
            firmware_files = files;
        }
    }
    NpuDevice {
        node: None,
        sysfs: pci.to_path_buf(),
        driver,
        pci_vendor: vendor,
        pci_device: device,
        pci_revision: revision,
        family,
        firmware_version,
        firmware_files,
    }
}

fn read_trim(p: &Path) -> Option<String> {
    let s = fs::read_to_string(p).ok()?;
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_string())
}

fn read_hex(p: &Path) -> Option<u32> {
    let s = read_trim(p)?;
    u32::from_str_radix(s.trim_start_matches("0x"), 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    struct TempDir(PathBuf);
    impl TempDir {
        fn new(tag: &str) -> TempDir {
            let p = std::env::temp_dir().join(format!(
                "mixq-npu-{tag}-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            let _ = fs::remove_dir_all(&p);
            fs::create_dir_all(&p).unwrap();
            TempDir(p)
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn write(p: &Path, s: &str) {
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, s).unwrap();
    }

    #[test]
    fn this_machine_has_no_xdna_device() {
        // The project's machines have no NPU: detection says so, without error or panic.
        let d = detect();
        println!("{d}");
        assert!(!d.present());
        assert_eq!(d.summary(), "no XDNA device");
        assert!(d.can_do_today().starts_with("No XDNA NPU"));
    }

    #[test]
    fn fake_phoenix_with_driver_and_firmware() {
        let t = TempDir::new("phx");
        let r = &t.0;
        let pci = r.join("sys/devices/pci0000:00/0000:00:08.2/0000:c4:00.1");
        write(&pci.join("vendor"), "0x1022\n");
        write(&pci.join("device"), "0x1502\n");
        write(&pci.join("revision"), "0x00\n");
        let drv = r.join("sys/bus/pci/drivers/amdxdna");
        fs::create_dir_all(&drv).unwrap();
        std::os::unix::fs::symlink(&drv, pci.join("driver")).unwrap();
        fs::create_dir_all(r.join("sys/class/accel/accel0")).unwrap();
        std::os::unix::fs::symlink(&pci, r.join("sys/class/accel/accel0/device")).unwrap();
        fs::create_dir_all(r.join("sys/bus/pci/devices")).unwrap();
        std::os::unix::fs::symlink(&pci, r.join("sys/bus/pci/devices/0000:c4:00.1")).unwrap();
        write(&r.join("dev/accel/accel0"), "");
        write(&r.join("sys/module/amdxdna/version"), "2.19.0\n");
        write(
            &r.join("lib/firmware/amdnpu/1502_00/npu.sbin.1.5.5.391"),
            "",
        );

        let d = detect_at(r);
        println!("{d}");
        assert!(d.present());
        assert_eq!(
            d.devices.len(),
            1,
            "the PCI scan must not list the accel device twice"
        );
        let dev = &d.devices[0];
        assert!(dev.is_phoenix_class());
        assert_eq!(dev.driver.as_deref(), Some("amdxdna"));
        assert_eq!(
            dev.node.as_deref(),
            Some(r.join("dev/accel/accel0").as_path())
        );
        assert_eq!(dev.firmware_files.len(), 1);
        assert_eq!(d.driver_version.as_deref(), Some("2.19.0"));
        assert!(d.can_do_today().contains("cannot execute anything"));
        assert!(d.summary().starts_with("Phoenix / Hawk Point"));
    }

    #[test]
    fn npu_without_driver_is_reported_but_not_present() {
        let t = TempDir::new("nodrv");
        let r = &t.0;
        let pci = r.join("sys/bus/pci/devices/0000:c4:00.1");
        write(&pci.join("vendor"), "0x1022\n");
        write(&pci.join("device"), "0x17f0\n");
        write(&pci.join("revision"), "0x10\n");
        let d = detect_at(r);
        assert!(!d.present());
        assert_eq!(d.devices.len(), 1);
        assert!(d.can_do_today().contains("not bound"));
        assert!(d.can_do_today().contains("XDNA2"));
    }
}
