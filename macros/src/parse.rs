//! Parsing: the attribute's arguments and the function it is put on.

use proc_macro2::{Span, TokenStream};
use syn::parse::Parser;
use syn::{ItemFn, Lit, LitBool, LitStr};

/// A number of seconds written in the attribute, kept with its span and as nanoseconds
/// (so the expansion builds a `Duration` in a `const`).
pub struct Seconds {
    /// The value in nanoseconds.
    pub nanos: u64,
    /// Where it is written.
    pub span: Span,
}

/// `retry_backoff = true | false | <seconds>`.
pub enum Backoff {
    /// `true` (factor 1 s) or `false`.
    Flag(bool),
    /// A factor in seconds.
    Factor(Seconds),
}

/// `rate_limit = "10/s"`: tasks per second.
pub struct Rate {
    /// Tasks per second (0 means no limit, as in Celery).
    pub per_second: f64,
}

/// The arguments of `#[task(...)]`.
#[derive(Default)]
pub struct TaskArgs {
    /// `name = "..."`: the Celery name.
    pub name: Option<LitStr>,
    /// `acks_late = true|false`.
    pub acks_late: Option<LitBool>,
    /// `max_retries = N`.
    pub max_retries: Option<u32>,
    /// `default_retry_delay = seconds`.
    pub default_retry_delay: Option<Seconds>,
    /// `autoretry_for = ["ExcType", ...]`: Python class names of errors retried by themselves.
    pub autoretry_for: Option<Vec<LitStr>>,
    /// `retry_backoff = true | seconds`.
    pub retry_backoff: Option<Backoff>,
    /// `retry_backoff_max = seconds`.
    pub retry_backoff_max: Option<Seconds>,
    /// `retry_jitter = true|false`.
    pub retry_jitter: Option<LitBool>,
    /// `time_limit = seconds`: the hard limit.
    pub time_limit: Option<Seconds>,
    /// `soft_time_limit = seconds`.
    pub soft_time_limit: Option<Seconds>,
    /// `rate_limit = "10/s"`.
    pub rate_limit: Option<Rate>,
    /// `ignore_result = true|false`.
    pub ignore_result: Option<LitBool>,
    /// `track_started = true|false`.
    pub track_started: Option<LitBool>,
    /// `reject_on_worker_lost = true|false`.
    pub reject_on_worker_lost: Option<LitBool>,
    /// `acks_on_failure_or_timeout = true|false`.
    pub acks_on_failure_or_timeout: Option<LitBool>,
}

const SUPPORTED: &str = "supported arguments: `name = \"...\"`, `acks_late`, `max_retries`, \
`default_retry_delay`, `autoretry_for = [\"ExcType\", ..]`, `retry_backoff`, `retry_backoff_max`, \
`retry_jitter`, `time_limit`, `soft_time_limit`, `rate_limit = \"10/s\"`, `ignore_result`, \
`track_started`, `reject_on_worker_lost`, `acks_on_failure_or_timeout`";

/// Parses the attribute's arguments; every problem is spanned at the offending token.
pub fn task_args(attr: TokenStream) -> syn::Result<TaskArgs> {
    let mut args = TaskArgs::default();
    let parser = syn::meta::parser(|meta| {
        let Some(key) = meta.path.get_ident().map(ToString::to_string) else {
            return Err(meta.error(format!("unsupported #[task] argument; {SUPPORTED}")));
        };
        macro_rules! once {
            ($field:ident, $value:expr) => {{
                if args.$field.is_some() {
                    return Err(meta.error(format!("`{}` is given twice", stringify!($field))));
                }
                args.$field = Some($value);
                Ok(())
            }};
        }
        match key.as_str() {
            "name" => {
                let name: LitStr = meta.value()?.parse()?;
                if name.value().trim().is_empty() {
                    return Err(syn::Error::new(name.span(), "a task name cannot be empty"));
                }
                once!(name, name)
            }
            "acks_late" => once!(acks_late, meta.value()?.parse()?),
            "retry_jitter" => once!(retry_jitter, meta.value()?.parse()?),
            "ignore_result" => once!(ignore_result, meta.value()?.parse()?),
            "track_started" => once!(track_started, meta.value()?.parse()?),
            "reject_on_worker_lost" => once!(reject_on_worker_lost, meta.value()?.parse()?),
            "acks_on_failure_or_timeout" => {
                once!(acks_on_failure_or_timeout, meta.value()?.parse()?)
            }
            "max_retries" => {
                let lit: syn::LitInt = meta.value()?.parse()?;
                once!(max_retries, lit.base10_parse::<u32>()?)
            }
            "default_retry_delay" => once!(default_retry_delay, seconds(meta.value()?.parse()?)?),
            "retry_backoff_max" => once!(retry_backoff_max, seconds(meta.value()?.parse()?)?),
            "time_limit" => once!(
                time_limit,
                positive(seconds(meta.value()?.parse()?)?, &key)?
            ),
            "soft_time_limit" => {
                once!(
                    soft_time_limit,
                    positive(seconds(meta.value()?.parse()?)?, &key)?
                )
            }
            "retry_backoff" => {
                let backoff = match meta.value()?.parse::<Lit>()? {
                    Lit::Bool(b) => Backoff::Flag(b.value),
                    other => Backoff::Factor(seconds(other)?),
                };
                once!(retry_backoff, backoff)
            }
            "rate_limit" => {
                let lit: LitStr = meta.value()?.parse()?;
                let per_second = rate(&lit.value()).ok_or_else(|| {
                    syn::Error::new(
                        lit.span(),
                        "a rate limit is a number of tasks per second, minute or hour: \"10/s\", \"100/m\", \"1000/h\" (or \"10\" for per second)",
                    )
                })?;
                once!(rate_limit, Rate { per_second })
            }
            "autoretry_for" => {
                let list: syn::ExprArray = meta.value()?.parse()?;
                let mut names = Vec::new();
                for elem in &list.elems {
                    match elem {
                        syn::Expr::Lit(syn::ExprLit {
                            lit: Lit::Str(s), ..
                        }) if !s.value().trim().is_empty() => names.push(s.clone()),
                        other => {
                            return Err(syn::Error::new_spanned(
                                other,
                                "`autoretry_for` lists Python exception class names as strings, e.g. [\"ConnectionError\", \"TimeoutError\"]: the `exc_type` a task's error is stored as",
                            ));
                        }
                    }
                }
                once!(autoretry_for, names)
            }
            _ => Err(meta.error(format!("unsupported #[task] argument `{key}`; {SUPPORTED}"))),
        }
    });
    parser.parse2(attr)?;
    Ok(args)
}

/// A non-negative number of seconds: an integer or a float literal.
fn seconds(lit: Lit) -> syn::Result<Seconds> {
    let (value, span) = match &lit {
        Lit::Int(i) => (i.base10_parse::<f64>()?, i.span()),
        Lit::Float(f) => (f.base10_parse::<f64>()?, f.span()),
        other => {
            return Err(syn::Error::new(
                other.span(),
                "expected a number of seconds (an integer or a float)",
            ));
        }
    };
    let nanos = value * 1e9;
    if !nanos.is_finite() || nanos < 0.0 || nanos > u64::MAX as f64 {
        return Err(syn::Error::new(
            span,
            "expected a non-negative number of seconds",
        ));
    }
    Ok(Seconds {
        nanos: nanos.round() as u64,
        span,
    })
}

fn positive(s: Seconds, key: &str) -> syn::Result<Seconds> {
    if s.nanos == 0 {
        return Err(syn::Error::new(
            s.span,
            format!("`{key}` must be more than 0 seconds (leave it out for no limit)"),
        ));
    }
    Ok(s)
}

/// Celery's `celery.utils.time.rate`: `"10/s"`, `"100/m"`, `"1000/h"`, or a bare number
/// (per second), as tasks per second.
fn rate(text: &str) -> Option<f64> {
    let text = text.trim();
    let (ops, per) = match text.split_once('/') {
        Some((ops, unit)) => {
            let per = match unit.trim() {
                "s" => 1.0,
                "m" => 60.0,
                "h" => 3600.0,
                _ => return None,
            };
            (ops.trim(), per)
        }
        None => (text, 1.0),
    };
    let ops: f64 = ops.parse().ok()?;
    (ops.is_finite() && ops >= 0.0).then_some(ops / per)
}

/// Parses the item: `#[task]` only goes on functions.
pub fn task_fn(item: TokenStream) -> syn::Result<ItemFn> {
    syn::parse2(item).map_err(|e| {
        syn::Error::new(
            e.span(),
            "#[task] can only be put on a function (`fn` or `async fn`)",
        )
    })
}
