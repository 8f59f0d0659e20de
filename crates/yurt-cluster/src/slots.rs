//! The machine-wide registry of fleets: which slot each data folder holds.
//!
//! A slot gives a fleet its namespace prefix (`yurt<slot>-`), its root-namespace
//! interface (`yurt<slot>h`) and its host link (`10.255.<slot>.0/30`), so fleets can run
//! side by side. `registry/slots/<n>` holds the data folder that owns slot `n`.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::lock;
use crate::spec::{SLOTS, Slot};
use crate::state;

/// The slot registry under a machine-wide folder (`/var/lib/yurt` by default).
#[derive(Debug, Clone)]
pub struct Registry {
    dir: PathBuf,
}

impl Registry {
    /// The registry in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    fn slots_dir(&self) -> PathBuf {
        self.dir.join("slots")
    }

    fn slot_file(&self, slot: Slot) -> PathBuf {
        self.slots_dir().join(slot.0.to_string())
    }

    /// Every registered (slot, data folder) pair, whether or not the folder still exists.
    ///
    /// # Errors
    /// I/O errors reading the registry.
    pub fn entries(&self) -> Result<Vec<(Slot, PathBuf)>> {
        let dir = self.slots_dir();
        let read = match std::fs::read_dir(&dir) {
            Ok(r) => r,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io(&dir, e)),
        };
        let mut out = Vec::new();
        for entry in read {
            let entry = entry.map_err(|e| Error::io(&dir, e))?;
            let Some(slot) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u8>().ok())
            else {
                continue;
            };
            let target =
                std::fs::read_to_string(entry.path()).map_err(|e| Error::io(entry.path(), e))?;
            out.push((Slot(slot), PathBuf::from(target.trim())));
        }
        out.sort();
        Ok(out)
    }

    /// Whether `data_dir` still holds `slot`: it exists and its state names that slot, or
    /// it has no state yet (a `yurt up` that claimed the slot is still writing it).
    fn owns(data_dir: &Path, slot: Slot) -> bool {
        if !data_dir.is_dir() {
            return false;
        }
        match state::load(&data_dir.join("fleet.json")) {
            Ok(Some(s)) => s.slot == slot,
            Ok(None) => true,
            Err(_) => true,
        }
    }

    /// The slot registered to `data_dir`, claiming the lowest free one if it has none.
    /// `preferred` (from an existing state file) is kept when it is still free or ours.
    /// `in_use_elsewhere` tells whether a slot has leftovers on the machine (namespaces,
    /// interfaces) that make it unusable even though no registry entry claims it.
    ///
    /// # Errors
    /// [`Error::SlotsExhausted`] when every slot is taken; I/O errors.
    pub fn claim(
        &self,
        data_dir: &Path,
        preferred: Option<Slot>,
        in_use_elsewhere: &dyn Fn(Slot) -> bool,
    ) -> Result<Slot> {
        let _guard = lock::exclusive(&self.dir.join("slots.lock"))?;
        let entries = self.entries()?;
        let owner_of = |slot: Slot| entries.iter().find(|(s, _)| *s == slot).map(|(_, d)| d);
        let free = |slot: Slot| match owner_of(slot) {
            Some(dir) if dir == data_dir => true,
            Some(dir) => !Self::owns(dir, slot) && !in_use_elsewhere(slot),
            None => !in_use_elsewhere(slot),
        };
        let chosen = preferred
            .filter(|s| owner_of(*s).is_some_and(|d| d == data_dir) || free(*s))
            .or_else(|| (0..SLOTS).map(|n| Slot(n as u8)).find(|s| free(*s)))
            .ok_or(Error::SlotsExhausted(SLOTS))?;
        let file = self.slot_file(chosen);
        state::write_atomic(&file, data_dir.as_os_str().as_encoded_bytes())?;
        Ok(chosen)
    }

    /// Frees `slot` if `data_dir` holds it.
    ///
    /// # Errors
    /// I/O errors.
    pub fn release(&self, slot: Slot, data_dir: &Path) -> Result<()> {
        let _guard = lock::exclusive(&self.dir.join("slots.lock"))?;
        let file = self.slot_file(slot);
        match std::fs::read_to_string(&file) {
            Ok(owner) if Path::new(owner.trim()) == data_dir => {
                std::fs::remove_file(&file).map_err(|e| Error::io(&file, e))
            }
            Ok(_) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(&file, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::FleetSpec;
    use crate::state::FleetState;

    #[test]
    fn claims_lowest_free_slot_and_keeps_it_for_the_same_folder() {
        let reg_dir = tempfile::tempdir().unwrap();
        let reg = Registry::new(reg_dir.path());
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let none = |_| false;
        let sa = reg.claim(a.path(), None, &none).unwrap();
        state::save(
            &a.path().join("fleet.json"),
            &FleetState::new(FleetSpec::default(), sa),
        )
        .unwrap();
        let sb = reg.claim(b.path(), None, &none).unwrap();
        assert_eq!((sa, sb), (Slot(0), Slot(1)));
        assert_eq!(reg.claim(a.path(), Some(sa), &none).unwrap(), sa);
        // b has not written its state yet: its slot stays taken...
        let c = tempfile::tempdir().unwrap();
        assert_eq!(reg.claim(c.path(), None, &none).unwrap(), Slot(2));
        // ...until its folder is gone.
        drop(b);
        let d = tempfile::tempdir().unwrap();
        assert_eq!(reg.claim(d.path(), None, &none).unwrap(), Slot(1));
        reg.release(sa, a.path()).unwrap();
        assert_eq!(
            reg.entries().unwrap(),
            vec![
                (Slot(1), d.path().to_owned()),
                (Slot(2), c.path().to_owned())
            ]
        );
    }

    #[test]
    fn skips_slots_with_leftovers_on_the_machine() {
        let reg_dir = tempfile::tempdir().unwrap();
        let reg = Registry::new(reg_dir.path());
        let a = tempfile::tempdir().unwrap();
        let busy = |s: Slot| s.0 < 3;
        assert_eq!(reg.claim(a.path(), None, &busy).unwrap(), Slot(3));
    }
}
