//! Checks each event of a batch against the catalog. An invalid event never
//! blocks the valid ones: it is set aside with its reason for the dead letters.

use simd_json::prelude::*;
use simd_json::BorrowedValue as Value;

use super::envelope::{plausible_ms, truncate};
use crate::catalog::{AttrType, Attribute, EventCatalog};

/// One event refused, with why (`events[i]…: reason`).
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    pub index: usize,
    pub reason: String,
}

/// The outcome of checking every event of a batch.
#[derive(Debug, Default)]
pub struct Validated {
    /// Positions (in the batch) of the accepted events, ascending.
    pub accepted: Vec<u32>,
    pub rejected: Vec<Rejection>,
}

/// Checks every event; positions in `Validated` index `events`.
pub fn validate_events(events: &[Value<'_>], catalog: &EventCatalog) -> Validated {
    let mut out = Validated { accepted: Vec::with_capacity(events.len()), rejected: Vec::new() };
    for (i, event) in events.iter().enumerate() {
        match check_event(event, catalog) {
            Ok(()) => out.accepted.push(i as u32),
            Err(reason) => out.rejected.push(Rejection { index: i, reason: format!("events[{i}]{reason}") }),
        }
    }
    out
}

fn check_event(event: &Value<'_>, catalog: &EventCatalog) -> Result<(), String> {
    let items = event.as_array().ok_or(": expected an array [type, client_time_ms, attributes…]")?;
    let name = items.first().and_then(|v| v.as_str()).ok_or("[0]: expected the event type as a string")?;
    let ty = catalog.get(name).ok_or_else(|| format!("[0]: unknown or disabled event type `{}`", truncate(name, 64)))?;
    let time = items.get(1).ok_or("[1]: missing client_time_ms")?;
    plausible_ms(time).map_err(|m| format!("[1]: {m}"))?;
    let values = &items[2..];
    if values.len() > ty.attributes.len() {
        return Err(format!(": `{}` has {} attributes but the event carries {}", ty.name, ty.attributes.len(), values.len()));
    }
    for (j, attr) in ty.attributes.iter().enumerate() {
        let at = j + 2;
        match values.get(j) {
            None if attr.nullable => {}
            None => return Err(format!("[{at}]: missing `{}` (not nullable)", attr.name)),
            Some(v) => check_value(v, attr).map_err(|m| format!("[{at}] `{}`: {m}", attr.name))?,
        }
    }
    Ok(())
}

fn check_value(v: &Value<'_>, attr: &Attribute) -> Result<(), String> {
    if v.is_null() {
        return if attr.nullable { Ok(()) } else { Err("must not be null".into()) };
    }
    match attr.ty {
        AttrType::Text => {
            let s = v.as_str().ok_or("expected a string")?;
            check_len(s, attr.max_len)
        }
        AttrType::Int => {
            let n = match v {
                Value::Static(s) if s.is_i64() => s.as_i64().unwrap() as f64,
                Value::Static(s) if s.is_u64() => s.as_u64().unwrap() as f64,
                _ => return Err("expected an integer".into()),
            };
            check_range(n, attr)
        }
        AttrType::Float => {
            let n = v.cast_f64().filter(|_| v.is_number()).ok_or("expected a number")?;
            if !n.is_finite() {
                return Err("expected a finite number".into());
            }
            check_range(n, attr)
        }
        AttrType::Bool => v.as_bool().map(|_| ()).ok_or_else(|| "expected true or false".into()),
        AttrType::TextList => {
            let items = v.as_array().ok_or("expected an array of strings")?;
            if items.len() > attr.max_items {
                return Err(format!("{} items is over the limit of {}", items.len(), attr.max_items));
            }
            for (k, item) in items.iter().enumerate() {
                let s = item.as_str().ok_or_else(|| format!("item {k}: expected a string"))?;
                check_len(s, attr.max_len).map_err(|m| format!("item {k}: {m}"))?;
            }
            Ok(())
        }
    }
}

fn check_len(s: &str, max: usize) -> Result<(), String> {
    if s.contains('\0') {
        // PostgreSQL text and jsonb cannot hold NUL.
        Err("contains a NUL character".into())
    } else if s.len() > max {
        Err(format!("{} bytes is over the limit of {max}", s.len()))
    } else {
        Ok(())
    }
}

fn check_range(n: f64, attr: &Attribute) -> Result<(), String> {
    if n < attr.min || n > attr.max {
        Err(format!("{n} is outside [{}, {}]", attr.min, attr.max))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::built_in_events;

    fn catalog() -> EventCatalog {
        EventCatalog::from_config(&built_in_events(), 100)
    }

    fn run(events: &str) -> Validated {
        let mut buf = events.as_bytes().to_vec();
        let v = crate::payload::parse(&mut buf).unwrap();
        validate_events(v.as_array().unwrap(), &catalog())
    }

    fn reason(event: &str) -> String {
        let v = run(&format!("[{event}]"));
        assert!(v.accepted.is_empty(), "{event} was accepted");
        v.rejected[0].reason.clone()
    }

    const T: i64 = 1_764_000_000_000;

    #[test]
    fn valid_events_of_every_built_in() {
        let v = run(&format!(
            r#"[["pageviews",{T},"load",null],["clicks",{T},"BUTTON",1,10,20,"main>button"],
               ["link_clicks",{T},"Docs","https://x.test/docs"],["mouse_moves",{T},3,4],
               ["key_presses",{T},null,"INPUT"],["form_submissions",{T},"signup","/join",["email","plan"]]]"#
        ));
        assert_eq!(v.accepted, vec![0, 1, 2, 3, 4, 5], "{:?}", v.rejected);
    }

    #[test]
    fn trailing_nullable_attributes_may_be_omitted() {
        let v = run(&format!(r#"[["link_clicks",{T}],["pageviews",{T},"push"]]"#));
        assert_eq!(v.accepted, vec![0, 1]);
    }

    #[test]
    fn each_failure_is_named() {
        assert_eq!(reason("7"), "events[0]: expected an array [type, client_time_ms, attributes…]");
        assert_eq!(reason(&format!(r#"["nope",{T}]"#)), "events[0][0]: unknown or disabled event type `nope`");
        assert!(reason(r#"["clicks","yesterday"]"#).starts_with("events[0][1]: expected an integer"));
        assert!(reason(r#"["clicks",12]"#).starts_with("events[0][1]: 12 is not a plausible"));
        assert_eq!(reason(&format!(r#"["mouse_moves",{T},1,2,3]"#)), "events[0]: `mouse_moves` has 2 attributes but the event carries 3");
        assert_eq!(reason(&format!(r#"["mouse_moves",{T},1]"#)), "events[0][3]: missing `y` (not nullable)");
        assert_eq!(reason(&format!(r#"["mouse_moves",{T},1.5,2]"#)), "events[0][2] `x`: expected an integer");
        assert_eq!(reason(&format!(r#"["mouse_moves",{T},1,99999999999]"#)), "events[0][3] `y`: 99999999999 is outside [-1000000, 10000000]");
        assert_eq!(reason(&format!(r#"["clicks",{T},null,1,1,1,null]"#)), "events[0][2] `element`: must not be null");
        assert_eq!(reason(&format!(r#"["key_presses",{T},"{}","INPUT"]"#, "k".repeat(33))), "events[0][2] `key`: 33 bytes is over the limit of 32");
        assert_eq!(reason(&format!(r#"["form_submissions",{T},null,null,["a",1]]"#)), "events[0][4] `fields`: item 1: expected a string");
        assert_eq!(reason(&format!(r#"["key_presses",{T},"a\u0000b","INPUT"]"#)), "events[0][2] `key`: contains a NUL character");
    }

    #[test]
    fn invalid_events_do_not_block_valid_ones() {
        let v = run(&format!(r#"[["mouse_moves",{T},1,2],["mouse_moves",{T},"x",2],["mouse_moves",{T},5,6]]"#));
        assert_eq!(v.accepted, vec![0, 2]);
        assert_eq!(v.rejected.len(), 1);
        assert_eq!(v.rejected[0].index, 1);
    }
}
