//! A run asked for as name–value pairs under `rowstage train`'s flag names
//! (`epochs=3`, `device-memory=25%`): the browser page's URL query, and any
//! script's. Each value reads as the flag of that name does, and a name the
//! command line does not have is refused by name.

use std::path::PathBuf;

use crate::Named;
use crate::data::{DataSource, Format, HeaderMode, SyntheticSpec};
use crate::error::{Error, Result};
use crate::gpu::BackendChoice;
use crate::stage::{Budget, PolicyKind};
use crate::train::{BatchRequest, Order, RunRequest, RunSpec, number_list};

/// The names [`request_from_pairs`] reads, as `rowstage train` spells them.
pub const NAMES: [&str; 21] = [
    "data",
    "test",
    "test-fraction",
    "format",
    "header",
    "synthetic",
    "zipf",
    "epochs",
    "seed",
    "rank",
    "lr",
    "reg",
    "bias-reg",
    "decay",
    "init-std",
    "order",
    "batch",
    "backend",
    "device-memory",
    "policy",
    "threads",
];

/// The request `rowstage train` would make of the same flags; a pair may
/// name a flag once. `data` and `test` name files that the caller reads
/// ([`crate::session::Run::from_request_with`]).
pub fn request_from_pairs(pairs: &[(String, String)]) -> Result<RunRequest> {
    let mut source = DataSource::default();
    let mut spec = RunSpec::default();
    let (mut synthetic, mut zipf, mut lrs, mut regs) = (None, None, None, None);
    for (k, (name, value)) in pairs.iter().enumerate() {
        let flag = format!("`{}`", name.replace('-', "_"));
        if pairs[..k].iter().any(|(n, _)| n == name) {
            return Err(Error::arg(&flag, value.as_str(), "is given twice"));
        }
        let bad = |rule: &str| Error::arg(&flag, value.as_str(), rule);
        let number = |rule: &str| value.trim().parse::<f64>().ok().filter(|v| v.is_finite()).ok_or_else(|| bad(rule));
        let whole = |rule: &str| value.trim().parse::<usize>().map_err(|_| bad(rule));
        let named = |rule: &str| {
            Some(value.as_str()).filter(|v| !v.trim().is_empty()).ok_or_else(|| bad(rule)).map(|v| v.trim().to_string())
        };
        match name.as_str() {
            "data" => source.path = Some(PathBuf::from(named("must name a file")?)),
            "test" => source.test = Some(PathBuf::from(named("must name a file")?)),
            "test-fraction" => source.test_fraction = number("must be a number")?,
            "format" => source.options.format = from_name::<Format>(&flag, value)?,
            "header" => source.options.header = from_name::<HeaderMode>(&flag, value)?,
            "synthetic" => synthetic = Some(value.clone()),
            "zipf" => zipf = Some(number("must be a number")?),
            "epochs" => spec.epochs = whole("must be a whole number of epochs")?,
            "seed" => spec.seed = value.trim().parse().map_err(|_| bad("must be a whole number"))?,
            "rank" => spec.hp.rank = whole("must be a whole number")?,
            "lr" => lrs = Some(number_list(&flag, value)?),
            "reg" => regs = Some(number_list(&flag, value)?),
            "bias-reg" => spec.hp.bias_reg = number("must be a number")? as f32,
            "decay" => spec.hp.decay = number("must be a number")? as f32,
            "init-std" => spec.hp.init_std = number("must be a number")? as f32,
            "order" => spec.order = Order::parse(value)?,
            "batch" => {
                spec.batch = match value.trim() {
                    "auto" => BatchRequest::Auto,
                    b => BatchRequest::Fixed(b.parse().map_err(|_| bad("must be auto or a whole number"))?),
                }
            }
            "backend" => spec.backend.backend = from_name::<BackendChoice>(&flag, value)?,
            "device-memory" => {
                spec.backend.device_memory = match value.trim() {
                    "auto" => None,
                    b => Some(Budget::parse(&flag, b)?),
                }
            }
            "policy" => spec.backend.policy = from_name::<PolicyKind>(&flag, value)?,
            "threads" => spec.backend.threads = whole("must be a whole number")?,
            _ => {
                return Err(Error::arg(
                    &flag,
                    value.as_str(),
                    format!("is not a setting; the settings: {}", NAMES.join(", ")),
                ));
            }
        }
    }
    if source.path.is_some() && (synthetic.is_some() || zipf.is_some()) {
        return Err(Error::arg("`synthetic`", synthetic.unwrap_or_default(), "cannot be given with `data`"));
    }
    if source.test.is_some() && pairs.iter().any(|(n, _)| n == "test-fraction") {
        return Err(Error::arg("`test_fraction`", source.test_fraction.to_string(), "cannot be given with `test`"));
    }
    source.synthetic = match synthetic {
        Some(s) => SyntheticSpec::parse(&s, zipf)?,
        None => SyntheticSpec { zipf, ..SyntheticSpec::DEFAULT },
    };
    let spec = spec.with_lr_reg(lrs, regs);
    spec.validate()?;
    Ok(RunRequest { source, spec })
}

fn from_name<T: Named>(flag: &str, value: &str) -> Result<T> {
    T::from_name(value).ok_or_else(|| Error::arg(flag, value, format!("must be one of {}", T::names())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(q: &[(&str, &str)]) -> Vec<(String, String)> {
        q.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn pairs_read_as_the_flags_of_their_names() {
        let r = request_from_pairs(&pairs(&[
            ("synthetic", "400,200,6000"),
            ("epochs", "3"),
            ("device-memory", "25%"),
            ("policy", "lru"),
            ("seed", "7"),
            ("backend", "cpu"),
            ("lr", "0.05"),
        ]))
        .unwrap();
        assert_eq!((r.source.synthetic.users, r.source.synthetic.ratings), (400, 6000));
        assert_eq!((r.spec.epochs, r.spec.seed, r.spec.backend.backend), (3, 7, BackendChoice::Cpu));
        assert_eq!(r.spec.backend.policy, PolicyKind::Lru);
        assert_eq!(r.spec.backend.device_memory, Some(Budget::parse("x", "25%").unwrap()));
        // lr given is fixed; reg, not given, is chosen.
        assert!(!r.spec.tune.lr && r.spec.tune.reg);
        assert_eq!(r.spec.hp.lr, 0.05);
        // Nothing given: `rowstage train`'s defaults.
        let d = request_from_pairs(&[]).unwrap();
        assert_eq!(d.spec, RunSpec::default());
        assert_eq!(d.source, DataSource::default());
        let g = request_from_pairs(&pairs(&[("lr", "0.02,0.05"), ("reg", "0.1")])).unwrap();
        assert_eq!(g.spec.grid.len(), 2);
    }

    #[test]
    fn bad_pairs_are_refused_by_name() {
        for (q, needle) in [
            (vec![("epochs", "x")], "epochs"),
            (vec![("epochs", "0")], "epochs"),
            (vec![("colour", "red")], "colour"),
            (vec![("seed", "1"), ("seed", "2")], "twice"),
            (vec![("lr", "0.1,0.1")], "twice"),
            (vec![("policy", "fifo")], "policy"),
            (vec![("device-memory", "lots")], "device_memory"),
            (vec![("data", "a.csv"), ("synthetic", "10,10,50")], "synthetic"),
            (vec![("rank", "0")], "rank"),
        ] {
            let e = request_from_pairs(&pairs(&q)).unwrap_err().to_string();
            assert!(e.contains(needle), "{q:?}: {e}");
        }
    }
}
