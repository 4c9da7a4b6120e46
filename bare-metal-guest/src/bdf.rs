//! A PCI function's address, as both guests' bus scans name it.

/// Bus, device and function of a PCI function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bdf {
    /// Bus number.
    pub bus: u8,
    /// Device number, 0..32.
    pub device: u8,
    /// Function number, 0..8.
    pub function: u8,
}

impl core::fmt::Display for Bdf {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{:02x}:{:02x}.{}", self.bus, self.device, self.function)
    }
}

#[cfg(test)]
mod tests {
    use super::Bdf;

    #[test]
    fn displays_as_lspci_does() {
        let bdf = Bdf {
            bus: 0,
            device: 0x1f,
            function: 3,
        };
        assert_eq!(bdf.to_string(), "00:1f.3");
    }
}
