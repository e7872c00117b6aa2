//! Settings with a fixed set of values, each with the name that flags and
//! JSON spell it with and a line of help. Front ends list and parse them
//! through [`Named`] (the command line builds its flags' possible values
//! from it), so the library needs no command-line crate.

/// A setting with a fixed set of named values.
pub trait Named: Copy + PartialEq + Send + Sync + 'static {
    /// Every value, in the order help lists them.
    const ALL: &'static [Self];
    /// As flags and JSON spell it.
    fn name(self) -> &'static str;
    /// One line of help.
    fn about(self) -> &'static str;
    /// The value named `s` (case and surrounding space ignored).
    fn from_name(s: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|v| v.name().eq_ignore_ascii_case(s.trim()))
    }
    /// Every name, comma-separated, for messages.
    fn names() -> String {
        Self::ALL.iter().map(|v| v.name()).collect::<Vec<_>>().join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::Named;
    use crate::data::{Format, HeaderMode};
    use crate::gpu::BackendChoice;
    use crate::stage::PolicyKind;

    /// Every value's name parses back to it, has help, and is the name its
    /// JSON (serde) uses, so flags, reports and requests agree.
    fn round_trips<T: Named + std::fmt::Debug + serde::Serialize + serde::de::DeserializeOwned>() {
        for &v in T::ALL {
            assert_eq!(T::from_name(v.name()), Some(v), "{v:?}");
            assert_eq!(T::from_name(&v.name().to_uppercase()), Some(v), "{v:?}");
            assert!(!v.about().is_empty(), "{v:?}");
            assert_eq!(serde_json::to_value(v).unwrap(), serde_json::Value::String(v.name().into()), "{v:?}");
            assert_eq!(serde_json::from_value::<T>(v.name().into()).unwrap(), v);
        }
        assert!(T::from_name("no such value").is_none());
    }

    #[test]
    fn every_named_setting_round_trips() {
        round_trips::<Format>();
        round_trips::<HeaderMode>();
        round_trips::<BackendChoice>();
        round_trips::<PolicyKind>();
    }
}
