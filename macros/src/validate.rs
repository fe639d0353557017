//! Validation: what a task function may look like, as a model the expansion reads.
//!
//! Every rule failure is a `syn::Error` spanned at the offending token, and all of them are
//! reported together.

use crate::parse::TaskArgs;
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::{FnArg, GenericArgument, Ident, ItemFn, Pat, PathArguments, ReturnType, Type};

/// A function accepted as a task.
pub struct TaskFn {
    /// The function's name.
    pub ident: Ident,
    /// The function's visibility, which its call stub shares.
    pub vis: syn::Visibility,
    /// `async fn` or a plain (blocking) fn.
    pub is_async: bool,
    /// The parameters in order.
    pub params: Vec<Param>,
    /// What it returns.
    pub output: Output,
    /// The attribute's arguments.
    pub args: TaskArgs,
}

/// One parameter.
pub enum Param {
    /// A value filled from `args` / `kwargs`.
    Value {
        /// Its keyword name (raw identifiers unescaped).
        name: String,
        /// Its name as written (without `mut`), for the call stub's parameter.
        ident: Ident,
        /// Its type.
        ty: Box<Type>,
        /// `Option<T>`: may be left out.
        optional: bool,
    },
    /// `&Request`: the request context.
    Request {
        /// The reference type as written, for spans.
        ty: Box<Type>,
    },
}

/// The return type.
pub enum Output {
    /// No return type: the result is `None` for Python.
    Unit,
    /// A `Result<T, E>` (recognized by the last path segment `Result`).
    Result {
        /// The whole type.
        ty: Box<Type>,
        /// `T`, when written out.
        ok: Option<Box<Type>>,
        /// `E`, when written out (aliases such as `io::Result<T>` leave it out).
        err: Option<Box<Type>>,
    },
    /// Any other type, serialized as it is.
    Value(Box<Type>),
}

/// Checks the function against the rules and builds the model.
pub fn task_fn(func: &ItemFn, args: TaskArgs) -> syn::Result<TaskFn> {
    let sig = &func.sig;
    let mut errors: Vec<syn::Error> = Vec::new();

    if !sig.generics.params.is_empty() {
        errors.push(syn::Error::new_spanned(
            &sig.generics,
            "a #[task] function cannot be generic: the worker needs concrete parameter and return types to deserialize the arguments and serialize the result",
        ));
    }
    if let Some(clause) = &sig.generics.where_clause {
        errors.push(syn::Error::new_spanned(
            clause,
            "a #[task] function cannot have a `where` clause",
        ));
    }
    if let Some(unsafety) = &sig.unsafety {
        errors.push(syn::Error::new_spanned(
            unsafety,
            "a #[task] function cannot be `unsafe`: the worker calls it with arguments from the network",
        ));
    }
    if let Some(abi) = &sig.abi {
        errors.push(syn::Error::new_spanned(
            abi,
            "a #[task] function cannot have an explicit ABI",
        ));
    }
    if let Some(variadic) = &sig.variadic {
        errors.push(syn::Error::new_spanned(
            variadic,
            "a #[task] function cannot be variadic",
        ));
    }

    let mut params = Vec::new();
    for input in &sig.inputs {
        match input {
            FnArg::Receiver(receiver) => errors.push(syn::Error::new_spanned(
                receiver,
                "#[task] cannot take `self`: a task is a free function (put it outside the `impl` block)",
            )),
            FnArg::Typed(typed) => match param(&typed.pat, &typed.ty) {
                Ok(p) => params.push(p),
                Err(e) => errors.push(e),
            },
        }
    }

    let output = match &sig.output {
        ReturnType::Default => Output::Unit,
        ReturnType::Type(_, ty) => match output(ty) {
            Ok(o) => o,
            Err(e) => {
                errors.push(e);
                Output::Unit
            }
        },
    };

    let mut errors = errors.into_iter();
    if let Some(mut first) = errors.next() {
        first.extend(errors);
        return Err(first);
    }
    Ok(TaskFn {
        ident: sig.ident.clone(),
        vis: func.vis.clone(),
        is_async: sig.asyncness.is_some(),
        params,
        output,
        args,
    })
}

fn param(pat: &Pat, ty: &Type) -> syn::Result<Param> {
    if let Type::Reference(reference) = ty {
        if reference.mutability.is_none() && last_segment_is(&reference.elem, "Request") {
            return Ok(Param::Request {
                ty: Box::new(ty.clone()),
            });
        }
        return Err(syn::Error::new_spanned(
            ty,
            "the only reference a #[task] parameter may be is `&Request`: arguments are deserialized into owned values (use `String` for `&str`, `Vec<T>` for `&[T]`)",
        ));
    }
    if let Type::ImplTrait(_) = ty {
        return Err(syn::Error::new_spanned(
            ty,
            "a #[task] parameter cannot be `impl Trait` (that makes the function generic): use a concrete serde type",
        ));
    }
    let ident = match pat {
        Pat::Ident(p) if p.by_ref.is_none() && p.subpat.is_none() => p.ident.clone(),
        other => {
            return Err(syn::Error::new(
                other.span(),
                "a #[task] parameter must be a plain name: Python callers pass arguments by that name as a keyword",
            ));
        }
    };
    Ok(Param::Value {
        name: ident.unraw().to_string(),
        ident,
        optional: option_inner(ty).is_some(),
        ty: Box::new(ty.clone()),
    })
}

fn output(ty: &Type) -> syn::Result<Output> {
    if let Type::ImplTrait(_) = ty {
        return Err(syn::Error::new_spanned(
            ty,
            "a #[task] function must return a concrete type, not `impl Trait`",
        ));
    }
    if let Some(args) = last_segment_args(ty, "Result") {
        let mut types = args.into_iter().map(Box::new);
        return Ok(Output::Result {
            ty: Box::new(ty.clone()),
            ok: types.next(),
            err: types.next(),
        });
    }
    Ok(Output::Value(Box::new(ty.clone())))
}

fn last_segment_is(ty: &Type, ident: &str) -> bool {
    matches!(ty, Type::Path(p) if p.qself.is_none()
        && p.path.segments.last().is_some_and(|s| s.ident == ident && s.arguments.is_none()))
}

/// The type arguments of `...::<ident><A, B>`, when `ty` is such a path.
fn last_segment_args(ty: &Type, ident: &str) -> Option<Vec<Type>> {
    let Type::Path(p) = ty else { return None };
    if p.qself.is_some() {
        return None;
    }
    let segment = p.path.segments.last()?;
    if segment.ident != ident {
        return None;
    }
    match &segment.arguments {
        PathArguments::AngleBracketed(a) => Some(
            a.args
                .iter()
                .filter_map(|arg| match arg {
                    GenericArgument::Type(t) => Some(t.clone()),
                    _ => None,
                })
                .collect(),
        ),
        PathArguments::None => Some(Vec::new()),
        PathArguments::Parenthesized(_) => None,
    }
}

/// `T` for `Option<T>` (any path ending in `Option` with one type argument).
fn option_inner(ty: &Type) -> Option<Type> {
    let args = last_segment_args(ty, "Option")?;
    match <[Type; 1]>::try_from(args) {
        Ok([inner]) => Some(inner),
        Err(_) => None,
    }
}
