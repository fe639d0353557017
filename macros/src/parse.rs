//! Parsing: the attribute's arguments and the function it is put on.

use proc_macro2::TokenStream;
use syn::parse::Parser;
use syn::{ItemFn, LitBool, LitStr};

/// The arguments of `#[task(...)]`.
#[derive(Default)]
pub struct TaskArgs {
    /// `name = "..."`: the Celery name.
    pub name: Option<LitStr>,
    /// `acks_late = true|false`.
    pub acks_late: Option<LitBool>,
}

const SUPPORTED: &str = "supported arguments: `name = \"...\"`, `acks_late = true|false`";

/// Parses the attribute's arguments; every problem is spanned at the offending token.
pub fn task_args(attr: TokenStream) -> syn::Result<TaskArgs> {
    let mut args = TaskArgs::default();
    let parser = syn::meta::parser(|meta| {
        if meta.path.is_ident("name") {
            if args.name.is_some() {
                return Err(meta.error("`name` is given twice"));
            }
            let name: LitStr = meta.value()?.parse()?;
            if name.value().trim().is_empty() {
                return Err(syn::Error::new(name.span(), "a task name cannot be empty"));
            }
            args.name = Some(name);
            Ok(())
        } else if meta.path.is_ident("acks_late") {
            if args.acks_late.is_some() {
                return Err(meta.error("`acks_late` is given twice"));
            }
            args.acks_late = Some(meta.value()?.parse()?);
            Ok(())
        } else {
            let key = meta
                .path
                .get_ident()
                .map_or_else(|| "this".to_owned(), |i| format!("`{i}`"));
            Err(meta.error(format!("unsupported #[task] argument {key}; {SUPPORTED}")))
        }
    });
    parser.parse2(attr)?;
    Ok(args)
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
