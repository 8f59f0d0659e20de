//! Where an MQTT device's values are, beyond EdgeX's fixed `incoming/data/<device>/...`
//! topics: devices that publish on topics of their own (a sensor's
//! `tele/<name>/SENSOR`), a value picked from the JSON payload by a path. The webhook and
//! the driver read these the same way.
//!
//! A device's `ValueTopic` property, or a resource's `topic` attribute, names the topic;
//! a resource's `jsonPath` attribute names where in the payload its value is: a dotted
//! path (`$.AM2301.Temperature`, `sensors[0].value`) or a JSON Pointer (`/a/b/0`, for
//! keys holding dots).

/// The longest value topic: the agent subscribes again to all of a broker's topics in
/// packets of a bounded size after every reconnect.
pub const MAX_TOPIC_BYTES: usize = 1024;

/// Why `topic` cannot be a value topic, if it cannot: values are kept per topic, so it
/// must be a plain topic name, not a filter.
pub fn topic_problem(topic: &str) -> Option<&'static str> {
    if topic.is_empty() {
        Some("must not be empty")
    } else if topic.contains(['#', '+']) {
        Some("may not hold the wildcards # or +")
    } else if topic.contains('\0') {
        Some("may not hold a NUL character")
    } else if topic.len() > MAX_TOPIC_BYTES {
        Some("is longer than 1024 bytes")
    } else {
        None
    }
}

/// A `jsonPath` as a JSON Pointer (RFC 6901, what `serde_json::Value::pointer` takes):
/// a pointer is taken as it is; `$` alone is the whole payload; otherwise names joined by
/// dots, each followed by any `[index]`.
pub fn json_pointer(path: &str) -> Result<String, String> {
    if path.starts_with('/') {
        return Ok(path.to_owned());
    }
    if path == "$" {
        return Ok(String::new());
    }
    let rest = path.strip_prefix('$').unwrap_or(path);
    let rest = rest.strip_prefix('.').unwrap_or(rest);
    if rest.is_empty() {
        return Err(format!("{path:?} names nothing"));
    }
    let mut pointer = String::new();
    for (i, part) in rest.split('.').enumerate() {
        let (name, mut indexes) = match part.find('[') {
            Some(at) => part.split_at(at),
            None => (part, ""),
        };
        if name.is_empty() && (i > 0 || indexes.is_empty()) {
            return Err(format!("{path:?} has an empty name"));
        }
        if !name.is_empty() {
            pointer.push('/');
            pointer.push_str(&name.replace('~', "~0").replace('/', "~1"));
        }
        while let Some(inner) = indexes.strip_prefix('[') {
            let close = inner
                .find(']')
                .ok_or_else(|| format!("{path:?} has an unclosed ["))?;
            let index = &inner[..close];
            if index.is_empty() || !index.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!(
                    "{path:?}: [{index}] is not an array index (digits only)"
                ));
            }
            pointer.push('/');
            pointer.push_str(index);
            indexes = &inner[close + 1..];
        }
        if !indexes.is_empty() {
            return Err(format!("{path:?}: {indexes:?} follows an index"));
        }
    }
    Ok(pointer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_become_pointers() {
        assert_eq!(
            json_pointer("$.AM2301.Temperature").as_deref(),
            Ok("/AM2301/Temperature")
        );
        assert_eq!(
            json_pointer("AM2301.Humidity").as_deref(),
            Ok("/AM2301/Humidity")
        );
        assert_eq!(
            json_pointer("sensors[0].value").as_deref(),
            Ok("/sensors/0/value")
        );
        assert_eq!(json_pointer("$[1][2]").as_deref(), Ok("/1/2"));
        assert_eq!(json_pointer("a/b.c~d").as_deref(), Ok("/a~1b/c~0d"));
        assert_eq!(json_pointer("/a.b/0").as_deref(), Ok("/a.b/0"));
        assert_eq!(json_pointer("$").as_deref(), Ok(""));
        assert_eq!(
            json_pointer("température.°C").as_deref(),
            Ok("/température/°C")
        );
        for bad in [
            "", "$.", "a..b", "a.", "a[", "a[x]", "a[]", "a[0]b", "[0]..a",
        ] {
            assert!(json_pointer(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn value_topics_are_plain_topic_names() {
        assert_eq!(topic_problem("tele/sensor1/SENSOR"), None);
        assert!(topic_problem("tele/+/SENSOR").is_some());
        assert!(topic_problem("tele/#").is_some());
        assert!(topic_problem("").is_some());
        assert!(topic_problem(&"t".repeat(1025)).is_some());
    }
}
