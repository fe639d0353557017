//! Expansion: the user's function unchanged, its call stub, and a hidden runner with its
//! registration.
//!
//! The runner sits in `const _: () = { ... };`. The one name added to the user's module is
//! the call stub, a struct named like the function (the type namespace, so the function
//! keeps its name), which is what `add::new(2, 3)` needs. Everything names the runtime only
//! through `::celeriac::__private`, so nothing depends on the user's imports. Type checks are spanned at the user's types so a compile error
//! points at the parameter or return type that does not fit.

use crate::parse::{Backoff, Seconds, TaskArgs};
use crate::validate::{Output, Param, TaskFn};
use proc_macro2::{Span, TokenStream};
use quote::{ToTokens, format_ident, quote, quote_spanned};
use syn::ItemFn;
use syn::ext::IdentExt;
use syn::spanned::Spanned;

/// The function followed by its registration.
pub fn task(func: &ItemFn, task: &TaskFn) -> TokenStream {
    let rt = quote!(::celeriac::__private);
    let ident = &task.ident;
    let fn_name = ident.unraw().to_string();

    let mut param_table = Vec::new();
    let mut takes = Vec::new();
    let mut bound = Vec::new();
    let mut call_args = Vec::new();
    let request = syn::Ident::new("__celeriac_request", Span::call_site());
    for p in &task.params {
        match p {
            Param::Value {
                name, ty, optional, ..
            } => {
                let index = param_table.len();
                let ty_text = type_text(ty);
                param_table
                    .push(quote!(#rt::Param { name: #name, ty: #ty_text, optional: #optional }));
                let var = format_ident!("__celeriac_arg{}", index);
                // The method name carries the type's span too: rustc reports an unmet bound
                // of a method call at the method name.
                let method = syn::Ident::new(
                    if *optional { "take_optional" } else { "take" },
                    type_span(ty),
                );
                // Spanned at the type: a type serde cannot deserialize is reported there.
                let mut index_lit = proc_macro2::Literal::usize_unsuffixed(index);
                index_lit.set_span(type_span(ty));
                takes.push(quote_spanned!(type_span(ty)=> __binder.#method::<#ty>(#index_lit)?));
                bound.push(var.clone());
                call_args.push(var.into_token_stream());
            }
            Param::Request { ty } => {
                // Spanned at the type, the local's name included (an expression's span
                // is taken from its tokens): a `&Request` that is not celeriac's is
                // reported there.
                let span = type_span(ty);
                let local = syn::Ident::new("__celeriac_request", span);
                call_args.push(quote_spanned!(span=> &*#local));
            }
        }
    }
    let param_count = param_table.len();
    let types = task.params.iter().filter_map(|p| match p {
        Param::Value { ty, .. } => Some(ty),
        Param::Request { .. } => None,
    });

    let await_ = if task.is_async {
        quote!(.await)
    } else {
        quote!()
    };
    let output = match &task.output {
        Output::Unit => quote!(#rt::to_result_value(&__ret)),
        Output::Value(ty) => {
            quote_spanned!(type_span(ty)=> ::celeriac::__private::to_result_value::<#ty>(&__ret))
        }
        Output::Result { ty, ok, err } => {
            // Each half is converted on its own, spanned at `T` and at `E` (or at the whole
            // type for aliases that do not write them), so each unmet bound is reported
            // once, where it is written. The runtime path is written out inside
            // `quote_spanned!` so that every token of the call carries the span.
            let ok_span = type_span(ok.as_deref().unwrap_or(ty));
            let err_span = type_span(err.as_deref().unwrap_or(ty));
            let to_value =
                quote_spanned!(ok_span=> ::celeriac::__private::to_result_value(&__value));
            let to_error = quote_spanned!(err_span=> ::celeriac::__private::IntoTaskError::into_task_error(__error));
            quote! {
                match __ret {
                    ::core::result::Result::Ok(__value) => #to_value,
                    ::core::result::Result::Err(__error) => ::core::result::Result::Err(#to_error),
                }
            }
        }
    };
    let body = quote!({
        let __ret = #ident(#(#call_args),*) #await_;
        #output
    });

    let runner = if task.is_async {
        quote! {
            fn __celeriac_run(inv: #rt::Invocation) -> #rt::TaskFuture {
                let #rt::Invocation { args, kwargs, request: #request } = inv;
                match __celeriac_bind(args, kwargs) {
                    ::core::result::Result::Ok((#(#bound,)*)) => ::std::boxed::Box::pin(async move #body),
                    ::core::result::Result::Err(e) => {
                        ::std::boxed::Box::pin(::core::future::ready(::core::result::Result::Err(e)))
                    }
                }
            }
        }
    } else {
        quote! {
            fn __celeriac_run(inv: #rt::Invocation) -> #rt::TaskResult {
                let #rt::Invocation { args, kwargs, request: #request } = inv;
                let (#(#bound,)*) = __celeriac_bind(args, kwargs)?;
                #body
            }
        }
    };
    let variant = if task.is_async {
        quote!(Async)
    } else {
        quote!(Blocking)
    };

    let name = match &task.args.name {
        Some(lit) => quote!(::core::option::Option::Some(#lit)),
        None => quote!(::core::option::Option::None),
    };
    let options = options(&task.args);

    let stub = stub(task);

    quote! {
        #func

        #stub

        // The options use struct update syntax on purpose (new options must not break
        // existing expansions), which clippy would flag in the user's crate.
        #[doc(hidden)]
        #[allow(clippy::needless_update)]
        const _: () = {
            static __CELERIAC_PARAMS: [#rt::Param; #param_count] = [#(#param_table),*];

            #[allow(unused_mut, unused_variables)]
            fn __celeriac_bind(
                args: ::std::vec::Vec<#rt::serde_json::Value>,
                kwargs: #rt::serde_json::Map<::std::string::String, #rt::serde_json::Value>,
            ) -> ::core::result::Result<(#(#types,)*), #rt::TaskError> {
                let mut __binder = #rt::ArgBinder::new(#fn_name, &__CELERIAC_PARAMS, args, kwargs)?;
                ::core::result::Result::Ok((#(#takes,)*))
            }

            #runner

            #rt::inventory::submit! {
                #rt::TaskEntry {
                    name: #name,
                    module_path: ::core::module_path!(),
                    fn_name: #fn_name,
                    runner: #rt::Runner::#variant(__celeriac_run),
                    options: #rt::TaskOptions { #options ..#rt::TaskOptions::DEFAULT },
                }
            }
        };
    }
}

/// The `field: value,` list of the options given in the attribute (the rest come from
/// `TaskOptions::DEFAULT`).
fn options(args: &TaskArgs) -> TokenStream {
    let some = |value: TokenStream| quote!(::core::option::Option::Some(#value));
    let duration = |s: &Seconds| {
        let nanos = s.nanos;
        quote!(::core::time::Duration::from_nanos(#nanos))
    };
    let mut fields = Vec::new();
    let mut set = |field: &str, value: Option<TokenStream>| {
        if let Some(value) = value {
            let field = syn::Ident::new(field, Span::call_site());
            fields.push(quote!(#field: #value,));
        }
    };
    let flag = |lit: &Option<syn::LitBool>| lit.as_ref().map(|b| some(quote!(#b)));
    set("acks_late", flag(&args.acks_late));
    set("retry_jitter", flag(&args.retry_jitter));
    set("ignore_result", flag(&args.ignore_result));
    set("track_started", flag(&args.track_started));
    set("reject_on_worker_lost", flag(&args.reject_on_worker_lost));
    set(
        "acks_on_failure_or_timeout",
        flag(&args.acks_on_failure_or_timeout),
    );
    set("max_retries", args.max_retries.map(|n| some(quote!(#n))));
    set(
        "default_retry_delay",
        args.default_retry_delay.as_ref().map(|s| some(duration(s))),
    );
    set(
        "retry_backoff_max",
        args.retry_backoff_max.as_ref().map(|s| some(duration(s))),
    );
    set(
        "time_limit",
        args.time_limit.as_ref().map(|s| some(duration(s))),
    );
    set(
        "soft_time_limit",
        args.soft_time_limit.as_ref().map(|s| some(duration(s))),
    );
    set(
        "retry_backoff",
        args.retry_backoff.as_ref().map(|b| match b {
            // Celery's `retry_backoff = True` is a factor of one second.
            Backoff::Flag(true) => some(quote!(::core::time::Duration::from_secs(1))),
            Backoff::Flag(false) => quote!(::core::option::Option::None),
            Backoff::Factor(s) => some(duration(s)),
        }),
    );
    set(
        "rate_limit",
        args.rate_limit.as_ref().map(|r| {
            let per_second = r.per_second;
            some(quote!(::celeriac::__private::RateLimit { per_second: #per_second }))
        }),
    );
    set(
        "autoretry_for",
        args.autoretry_for
            .as_ref()
            .map(|names| quote!(&[#(#names),*])),
    );
    quote!(#(#fields)*)
}

/// The call stub: a braced struct named like the function (so it lives in the type
/// namespace and leaves the function callable), whose `new` takes the task's parameters and
/// builds a `Signature` typed by what the task returns: `add::new(2, 3)`.
///
/// The `Serialize` bounds on the parameters are written with a binder (`for<'a> T: ..`), so
/// rustc checks them where `new` is called rather than here: a task whose parameter type is
/// only `Deserialize` still compiles, and only calling its stub is an error.
fn stub(task: &TaskFn) -> TokenStream {
    let rt = quote!(::celeriac::__private);
    let ident = &task.ident;
    let vis = &task.vis;
    let fn_name = ident.unraw().to_string();
    let (idents, types): (Vec<_>, Vec<_>) = task
        .params
        .iter()
        .filter_map(|p| match p {
            Param::Value { ident, ty, .. } => Some((ident, ty)),
            Param::Request { .. } => None,
        })
        .unzip();
    let output = match &task.output {
        Output::Unit => quote!(()),
        Output::Value(ty) => quote!(#ty),
        Output::Result { ok: Some(ok), .. } => quote!(#ok),
        Output::Result { ty, ok: None, .. } => quote!(<#ty as #rt::ResultOk>::Ok),
    };
    let name = match &task.args.name {
        Some(lit) => quote!(::std::string::String::from(#lit)),
        None => quote!(#rt::task_name(::core::module_path!(), #fn_name)),
    };
    let doc_struct = format!(
        "The call stub of the task [`{fn_name}()`]: `{fn_name}::new(..)` takes the task's \
         parameters and builds the signature a `celeriac::client::Client` sends."
    );
    let doc_new = format!(
        "A call of the task `{fn_name}` with these arguments, typed by its result; send it \
         with `Client::send`."
    );
    quote! {
        #[doc = #doc_struct]
        #[allow(non_camel_case_types, dead_code)]
        #vis struct #ident {
            _stub: (),
        }

        #[allow(dead_code, clippy::new_ret_no_self, clippy::too_many_arguments)]
        impl #ident {
            /// The task's Celery name.
            #vis fn name() -> ::std::string::String {
                #name
            }

            #[doc = #doc_new]
            #vis fn new(#(#idents: #types),*) -> #rt::Signature<#output>
            where
                #(for<'__celeriac> #types: #rt::StubArg,)*
            {
                #rt::Signature::new(Self::name())#(.arg(#idents))*.returns::<#output>()
            }
        }
    }
}

/// When validation fails: the function as written (so its own uses still resolve and
/// errors do not cascade) and the validation errors.
pub fn fallback(item: TokenStream, error: syn::Error) -> TokenStream {
    let errors = error.to_compile_error();
    quote!(#item #errors)
}

/// Where to report a problem with a type: the last path segment (`ParseIntError` in
/// `std::num::ParseIntError`), since a span covering several tokens is not available to
/// proc macros on stable and would shrink to the first token.
///
/// Only the location is borrowed: name resolution stays the macro's call site, so the
/// generated locals spanned this way still resolve when `#[task]` is used inside a
/// `macro_rules!` macro (whose tokens carry their own hygiene).
fn type_span(ty: &syn::Type) -> Span {
    let location = match ty {
        syn::Type::Path(p) => p
            .path
            .segments
            .last()
            .map_or_else(|| ty.span(), |s| s.ident.span()),
        syn::Type::Reference(r) => return type_span(&r.elem),
        other => other.span(),
    };
    Span::call_site().located_at(location)
}

/// The type as written, tidied for messages: `Vec<String>`, not `Vec < String >`.
fn type_text(ty: &syn::Type) -> String {
    let mut text = ty.to_token_stream().to_string();
    for (from, to) in [
        (" :: ", "::"),
        (":: ", "::"),
        (" < ", "<"),
        ("< ", "<"),
        (" <", "<"),
        (" >", ">"),
        (" ,", ","),
        ("& ", "&"),
        ("[ ", "["),
        (" ]", "]"),
        ("( ", "("),
        (" )", ")"),
        (" ;", ";"),
    ] {
        text = text.replace(from, to);
    }
    text
}
