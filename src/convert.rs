//! Docker schema 2 media types to OCI ones (`--oci` on export and import): a manifest list
//! becomes an OCI index, a docker manifest an OCI manifest, and the descriptors of configs and
//! layers get the OCI names of the same formats. Only media types change: config and layer
//! blobs are not rewritten, so their digests stay, and every other field of a rewritten index
//! or manifest keeps its value and its place (objects are read as ordered key and raw-value
//! pairs, never through a map that would sort or drop them). Indexes and manifests that
//! change get new digests; their new bytes go to the caller's `put`, children before parents.
//! The same input always gives the same bytes.

use std::collections::HashMap;

use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::content::Provider;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::oci::{
    self, Descriptor, Kind, MAX_DEPTH, MEDIA_DOCKER_CONFIG, MEDIA_DOCKER_FOREIGN,
    MEDIA_DOCKER_FOREIGN_GZIP, MEDIA_DOCKER_LAYER, MEDIA_DOCKER_LAYER_GZIP,
    MEDIA_DOCKER_LAYER_ZSTD, MEDIA_OCI_CONFIG, MEDIA_OCI_LAYER, MEDIA_OCI_LAYER_GZIP,
    MEDIA_OCI_LAYER_ZSTD, MEDIA_OCI_NONDIST, MEDIA_OCI_NONDIST_GZIP,
};

/// The field of an index, a manifest and a descriptor that holds a media type.
const MEDIA_TYPE: &str = "mediaType";
/// The field before which a missing top-level `mediaType` is put.
const SCHEMA_VERSION: &str = "schemaVersion";
/// The fields of an index and a manifest that hold descriptors.
const MANIFESTS: &str = "manifests";
const CONFIG: &str = "config";
const LAYERS: &str = "layers";

/// The OCI media type of the same format as docker's `media_type`; None when it is not a docker
/// type (OCI types and types nobody converts stay as they are).
pub fn oci_media_type(media_type: &str) -> Option<&'static str> {
    Some(match media_type {
        oci::MEDIA_DOCKER_LIST => oci::MEDIA_OCI_INDEX,
        oci::MEDIA_DOCKER_MANIFEST => oci::MEDIA_OCI_MANIFEST,
        MEDIA_DOCKER_CONFIG => MEDIA_OCI_CONFIG,
        MEDIA_DOCKER_LAYER => MEDIA_OCI_LAYER,
        MEDIA_DOCKER_LAYER_GZIP => MEDIA_OCI_LAYER_GZIP,
        MEDIA_DOCKER_LAYER_ZSTD => MEDIA_OCI_LAYER_ZSTD,
        MEDIA_DOCKER_FOREIGN => MEDIA_OCI_NONDIST,
        MEDIA_DOCKER_FOREIGN_GZIP => MEDIA_OCI_NONDIST_GZIP,
        _ => return None,
    })
}

/// The image `root` names, with OCI media types: every index and manifest that changes is
/// written anew through `put` (children first), and the returned descriptor is `root` with the
/// new media type, digest and size (its annotations, platform and other fields kept). Nothing
/// docker-typed: `root` unchanged, and `put` never called.
pub fn to_oci(
    from: &dyn Provider,
    put: &mut dyn FnMut(&Descriptor, &[u8]) -> Result<()>,
    root: &Descriptor,
) -> Result<Descriptor> {
    Converter {
        from,
        put,
        done: HashMap::new(),
    }
    .convert(root, 0)
}

/// What a converted blob is now: media type, digest and size.
#[derive(Clone)]
struct Converted {
    media_type: String,
    digest: Digest,
    size: u64,
}

impl Converted {
    /// `desc` pointing at this blob, every other field kept.
    fn apply(&self, desc: &Descriptor) -> Descriptor {
        Descriptor {
            media_type: self.media_type.clone(),
            digest: self.digest.clone(),
            size: self.size,
            ..desc.clone()
        }
    }
}

struct Converter<'a> {
    from: &'a dyn Provider,
    put: &'a mut dyn FnMut(&Descriptor, &[u8]) -> Result<()>,
    /// Each blob converted so far, by digest and the media type it was reached as: one that is
    /// listed twice is converted (and put) once.
    done: HashMap<(Digest, String), Converted>,
}

impl Converter<'_> {
    fn convert(&mut self, desc: &Descriptor, depth: usize) -> Result<Descriptor> {
        if depth > MAX_DEPTH {
            return Err(Error::Json {
                file: format!("blob {}", desc.digest),
                message: format!("nested deeper than {MAX_DEPTH} levels"),
            });
        }
        let key = (desc.digest.clone(), desc.media_type.clone());
        if let Some(c) = self.done.get(&key) {
            return Ok(c.apply(desc));
        }
        let converted = match oci::kind_of(&desc.media_type) {
            Kind::Index | Kind::Manifest => self.rewrite(desc, depth)?,
            // Artifact manifests are OCI's own; leaves change their type only.
            Kind::Artifact => unchanged(desc),
            Kind::Leaf => Converted {
                media_type: oci_media_type(&desc.media_type)
                    .map_or_else(|| desc.media_type.clone(), str::to_owned),
                ..unchanged(desc)
            },
        };
        self.done.insert(key, converted.clone());
        Ok(converted.apply(desc))
    }

    /// An index or manifest: its children converted, then its own bytes rewritten and put if
    /// anything in them changed.
    fn rewrite(&mut self, desc: &Descriptor, depth: usize) -> Result<Converted> {
        let file = format!("blob {}", desc.digest);
        oci::check_json_size(&file, desc.size)?;
        let bytes = self.from.read_small(desc)?;
        // Checks the shape (the lists are lists of descriptors, the mediaType agrees).
        oci::children(desc, &bytes)?;
        let mut top = Object::parse(&file, &bytes)?;
        let mut changed = false;
        let fields: &[&str] = match oci::kind_of(&desc.media_type) {
            Kind::Index => &[MANIFESTS],
            _ => &[CONFIG, LAYERS],
        };
        for &field in fields {
            let Some(raw) = top.get(field) else { continue };
            let new = if field == CONFIG {
                self.child(&file, raw, depth)?
                    .map(|o| o.to_raw(&file))
                    .transpose()?
            } else {
                self.children(&file, raw, depth)?
            };
            if let Some(new) = new {
                top.set(field, new);
                changed = true;
            }
        }
        let media_type = oci_media_type(&desc.media_type).unwrap_or(&desc.media_type);
        // The blob's own mediaType: docker's becomes OCI's even under an OCI descriptor (the
        // walk checks only that both say manifest, or both index); missing, it is added when
        // the descriptor was docker's.
        let own: Option<String> = match top.get(MEDIA_TYPE) {
            Some(raw) => parse(&file, raw.get().as_bytes())?,
            None => None,
        };
        let own_new = match &own {
            Some(mt) => oci_media_type(mt),
            None => (media_type != desc.media_type).then_some(media_type),
        };
        if let Some(mt) = own_new {
            top.set_media_type(&file, mt)?;
            changed = true;
        }
        changed |= media_type != desc.media_type;
        if !changed {
            return Ok(unchanged(desc));
        }
        let bytes = top.to_text(&file)?.into_bytes();
        let new = Converted {
            media_type: media_type.to_owned(),
            digest: Digest::of(desc.digest.algorithm(), &bytes),
            size: bytes.len() as u64,
        };
        (self.put)(&new.apply(desc), &bytes)?;
        Ok(new)
    }

    /// A list of descriptors with each one converted; None when none changed.
    fn children(
        &mut self,
        file: &str,
        raw: &RawValue,
        depth: usize,
    ) -> Result<Option<Box<RawValue>>> {
        let list: Vec<Box<RawValue>> = parse(file, raw.get().as_bytes())?;
        let mut out = Vec::with_capacity(list.len());
        let mut changed = false;
        for item in list {
            match self.child(file, &item, depth)? {
                Some(obj) => {
                    out.push(obj.to_raw(file)?);
                    changed = true;
                }
                None => out.push(item),
            }
        }
        if !changed {
            return Ok(None);
        }
        raw_list(file, &out).map(Some)
    }

    /// One descriptor, its blob converted; the descriptor rewritten (media type, digest and
    /// size, nothing else) or None when its blob did not change.
    fn child(&mut self, file: &str, raw: &RawValue, depth: usize) -> Result<Option<Object>> {
        let desc: Descriptor = parse(file, raw.get().as_bytes())?;
        let new = self.convert(&desc, depth + 1)?;
        if new == desc {
            return Ok(None);
        }
        let mut obj = Object::parse(file, raw.get().as_bytes())?;
        obj.set(MEDIA_TYPE, to_raw(file, &new.media_type)?);
        obj.set("digest", to_raw(file, &new.digest.to_string())?);
        obj.set("size", to_raw(file, &new.size)?);
        Ok(Some(obj))
    }
}

fn unchanged(desc: &Descriptor) -> Converted {
    Converted {
        media_type: desc.media_type.clone(),
        digest: desc.digest.clone(),
        size: desc.size,
    }
}

fn parse<'a, T: Deserialize<'a>>(file: &str, bytes: &'a [u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| Error::Json {
        file: file.to_owned(),
        message: format!("invalid JSON: {e}"),
    })
}

fn to_raw<T: serde::Serialize + ?Sized>(file: &str, value: &T) -> Result<Box<RawValue>> {
    serde_json::value::to_raw_value(value).map_err(|e| Error::Json {
        file: file.to_owned(),
        message: e.to_string(),
    })
}

/// A JSON array of raw values, compact.
fn raw_list(file: &str, items: &[Box<RawValue>]) -> Result<Box<RawValue>> {
    let mut s = String::from("[");
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(item.get());
    }
    s.push(']');
    raw_text(file, s)
}

/// Text made of JSON values as one raw value (it is JSON by construction; checked anyway).
fn raw_text(file: &str, s: String) -> Result<Box<RawValue>> {
    RawValue::from_string(s).map_err(|e| Error::Json {
        file: file.to_owned(),
        message: format!("rewritten JSON: {e}"),
    })
}

/// A JSON object as its fields in the order written, each value as its raw text.
struct Object(Vec<(String, Box<RawValue>)>);

impl Object {
    fn parse(file: &str, bytes: &[u8]) -> Result<Object> {
        parse(file, bytes)
    }

    /// The first value of `key`.
    fn get(&self, key: &str) -> Option<&RawValue> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| &**v)
    }

    /// Gives every `key` the value `value`, or adds it at the end.
    fn set(&mut self, key: &str, value: Box<RawValue>) {
        let mut found = false;
        for (k, v) in &mut self.0 {
            if k == key {
                *v = value.clone();
                found = true;
            }
        }
        if !found {
            self.0.push((key.to_owned(), value));
        }
    }

    /// Sets the top-level `mediaType` to `media_type`, adding it after `schemaVersion` when
    /// it is missing (docker requires it, OCI recommends it).
    fn set_media_type(&mut self, file: &str, media_type: &str) -> Result<()> {
        let value = to_raw(file, media_type)?;
        if self.get(MEDIA_TYPE).is_some() {
            self.set(MEDIA_TYPE, value);
            return Ok(());
        }
        let at = self
            .0
            .iter()
            .position(|(k, _)| k == SCHEMA_VERSION)
            .map_or(0, |i| i + 1);
        self.0.insert(at, (MEDIA_TYPE.to_owned(), value));
        Ok(())
    }

    /// Compact JSON of the fields in their order.
    fn to_text(&self, file: &str) -> Result<String> {
        let mut out = String::from("{");
        for (i, (k, v)) in self.0.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(to_raw(file, k)?.get());
            out.push(':');
            out.push_str(v.get());
        }
        out.push('}');
        Ok(out)
    }

    fn to_raw(&self, file: &str) -> Result<Box<RawValue>> {
        raw_text(file, self.to_text(file)?)
    }
}

impl<'de> Deserialize<'de> for Object {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Object, D::Error> {
        struct Fields;
        impl<'de> Visitor<'de> for Fields {
            type Value = Object;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<Object, A::Error> {
                let mut fields = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, Box<RawValue>>()? {
                    fields.push((k, v));
                }
                Ok(Object(fields))
            }
        }
        d.deserialize_map(Fields)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Algorithm;
    use crate::oci::BlobSource;
    use std::fs::File;
    use std::io;

    /// Blobs in memory, as a provider (`to_oci` reads indexes and manifests whole only).
    #[derive(Default)]
    struct Mem(HashMap<Digest, Vec<u8>>);

    impl Mem {
        fn add(&mut self, media_type: &str, bytes: &[u8]) -> Descriptor {
            let digest = Digest::of(Algorithm::Sha256, bytes);
            self.0.insert(digest.clone(), bytes.to_vec());
            Descriptor::new(media_type, digest, bytes.len() as u64)
        }
        fn add_json(&mut self, media_type: &str, text: &str) -> Descriptor {
            self.add(media_type, text.as_bytes())
        }
    }

    impl BlobSource for Mem {
        fn blob_size(&self, digest: &Digest) -> Result<Option<u64>> {
            Ok(self.0.get(digest).map(|b| b.len() as u64))
        }
        fn read_small(&self, desc: &Descriptor) -> Result<Vec<u8>> {
            self.0.get(&desc.digest).cloned().ok_or(Error::MissingBlob {
                digest: desc.digest.clone(),
                referrer: None,
            })
        }
    }

    impl Provider for Mem {
        fn open(&self, desc: &Descriptor) -> Result<File> {
            Err(Error::Invalid(format!("{} is in memory", desc.digest)))
        }
        fn open_file(&self, _: &Digest) -> io::Result<File> {
            Err(io::ErrorKind::Unsupported.into())
        }
        fn locate(&self, digest: &Digest) -> String {
            format!("memory:{digest}")
        }
    }

    /// Converts `root`, returning the new root and every blob put, in order.
    fn convert(mem: &Mem, root: &Descriptor) -> (Descriptor, Vec<(Descriptor, Vec<u8>)>) {
        let mut put = Vec::new();
        let new = to_oci(
            mem,
            &mut |d: &Descriptor, b: &[u8]| {
                assert_eq!(Digest::of(d.digest.algorithm(), b), d.digest, "put digest");
                assert_eq!(d.size, b.len() as u64, "put size");
                put.push((d.clone(), b.to_vec()));
                Ok(())
            },
            root,
        )
        .unwrap();
        (new, put)
    }

    fn desc_json(d: &Descriptor) -> String {
        serde_json::to_string(d).unwrap()
    }

    /// A docker manifest with fields in an odd order, an unsorted annotation map, pretty
    /// whitespace inside a value and an unknown field, over one layer of each docker type.
    fn docker_image(mem: &mut Mem) -> (Descriptor, Descriptor, Vec<Descriptor>) {
        let config = mem.add(
            MEDIA_DOCKER_CONFIG,
            br#"{"architecture":"amd64","os":"linux"}"#,
        );
        let layers: Vec<Descriptor> = [
            MEDIA_DOCKER_LAYER_GZIP,
            MEDIA_DOCKER_LAYER,
            MEDIA_DOCKER_LAYER_ZSTD,
            MEDIA_DOCKER_FOREIGN_GZIP,
            MEDIA_DOCKER_FOREIGN,
            "application/x-unknown",
        ]
        .iter()
        .enumerate()
        .map(|(i, mt)| mem.add(mt, format!("layer {i}").as_bytes()))
        .collect();
        let mut foreign = layers[3].clone();
        foreign.urls = Some(vec!["https://example.com/l".into()]);
        let mut listed = layers.clone();
        listed[3] = foreign;
        let layers_json: Vec<String> = listed.iter().map(desc_json).collect();
        let text = format!(
            r#"{{"schemaVersion":2,"layers":[{}],"zz":{{ "b" : 1, "a" : [2] }},"mediaType":"{}","config":{}}}"#,
            layers_json.join(","),
            oci::MEDIA_DOCKER_MANIFEST,
            desc_json(&config),
        );
        let m = mem.add_json(oci::MEDIA_DOCKER_MANIFEST, &text);
        (m, config, listed)
    }

    #[test]
    fn a_docker_manifest_gets_oci_types_and_keeps_every_other_field_in_place() {
        let mut mem = Mem::default();
        let (m, config, layers) = docker_image(&mut mem);
        let (new, put) = convert(&mem, &m);
        assert_eq!(new.media_type, oci::MEDIA_OCI_MANIFEST);
        assert_ne!(new.digest, m.digest);
        assert_eq!(put.len(), 1, "only the manifest is new");
        assert_eq!(put[0].0, new);
        let text = String::from_utf8(put[0].1.clone()).unwrap();
        let expected_layers = [
            MEDIA_OCI_LAYER_GZIP,
            MEDIA_OCI_LAYER,
            MEDIA_OCI_LAYER_ZSTD,
            MEDIA_OCI_NONDIST_GZIP,
            MEDIA_OCI_NONDIST,
            "application/x-unknown",
        ];
        let layers_json: Vec<String> = layers
            .iter()
            .zip(expected_layers)
            .map(|(l, mt)| {
                desc_json(&Descriptor {
                    media_type: mt.into(),
                    ..l.clone()
                })
            })
            .collect();
        let expected = format!(
            r#"{{"schemaVersion":2,"layers":[{}],"zz":{{ "b" : 1, "a" : [2] }},"mediaType":"{}","config":{}}}"#,
            layers_json.join(","),
            oci::MEDIA_OCI_MANIFEST,
            desc_json(&Descriptor {
                media_type: MEDIA_OCI_CONFIG.into(),
                ..config.clone()
            }),
        );
        assert_eq!(text, expected);
        // Config and layer digests stay; the foreign layer keeps its urls.
        let kids = oci::children(&new, &put[0].1).unwrap();
        assert_eq!(kids[0].digest, config.digest);
        assert_eq!(
            kids[4].urls.as_deref(),
            Some(&["https://example.com/l".to_owned()][..])
        );
        // Again: the same bytes.
        assert_eq!(convert(&mem, &m).1, put);
    }

    #[test]
    fn a_manifest_list_becomes_an_index_after_its_children_keeping_platforms_and_annotations() {
        let mut mem = Mem::default();
        let (m1, _, _) = docker_image(&mut mem);
        let c2 = mem.add(
            MEDIA_DOCKER_CONFIG,
            br#"{"os":"linux","architecture":"arm64"}"#,
        );
        let m2_text = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","config":{},"layers":[]}}"#,
            oci::MEDIA_DOCKER_MANIFEST,
            desc_json(&c2)
        );
        let m2 = mem.add_json(oci::MEDIA_DOCKER_MANIFEST, &m2_text);
        let entry = |m: &Descriptor, arch: &str| {
            format!(
                r#"{{"mediaType":"{}","size":{},"digest":"{}","platform":{{"os":"linux","architecture":"{arch}"}},"annotations":{{"z":"1","a":"2"}}}}"#,
                m.media_type, m.size, m.digest
            )
        };
        // m1 listed twice: converted and put once.
        let list_text = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","manifests":[{},{},{}],"x-extra":true}}"#,
            oci::MEDIA_DOCKER_LIST,
            entry(&m1, "amd64"),
            entry(&m2, "arm64"),
            entry(&m1, "386"),
        );
        let mut root = mem.add_json(oci::MEDIA_DOCKER_LIST, &list_text);
        root.annotations.insert("keep".into(), "me".into());
        let (new, put) = convert(&mem, &root);
        assert_eq!(put.len(), 3, "two manifests and the index");
        assert_eq!(put[2].0, new, "the index last");
        assert_eq!(new.media_type, oci::MEDIA_OCI_INDEX);
        assert_eq!(new.annotations.get("keep").map(String::as_str), Some("me"));
        let n1 = &put[0].0;
        let n2 = &put[1].0;
        let expected = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","manifests":[{},{},{}],"x-extra":true}}"#,
            oci::MEDIA_OCI_INDEX,
            entry(n1, "amd64"),
            entry(n2, "arm64"),
            entry(n1, "386"),
        );
        assert_eq!(String::from_utf8(put[2].1.clone()).unwrap(), expected);
    }

    #[test]
    fn oci_images_are_left_alone_and_nothing_is_put() {
        let mut mem = Mem::default();
        let config = mem.add(MEDIA_OCI_CONFIG, b"{}");
        let layer = mem.add(MEDIA_OCI_LAYER_GZIP, b"l");
        let text = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","config":{},"layers":[{}]}}"#,
            oci::MEDIA_OCI_MANIFEST,
            desc_json(&config),
            desc_json(&layer)
        );
        let m = mem.add_json(oci::MEDIA_OCI_MANIFEST, &text);
        let idx = mem.add_json(
            oci::MEDIA_OCI_INDEX,
            &format!(r#"{{"schemaVersion":2,"manifests":[{}]}}"#, desc_json(&m)),
        );
        for root in [&m, &idx, &layer] {
            let (new, put) = convert(&mem, root);
            assert_eq!(&new, root);
            assert!(put.is_empty());
        }
    }

    #[test]
    fn an_oci_index_over_a_docker_manifest_is_rewritten_and_keeps_its_type() {
        let mut mem = Mem::default();
        let (m, _, _) = docker_image(&mut mem);
        let idx = mem.add_json(
            oci::MEDIA_OCI_INDEX,
            &format!(r#"{{"schemaVersion":2,"manifests":[{}]}}"#, desc_json(&m)),
        );
        let (new, put) = convert(&mem, &idx);
        assert_eq!(new.media_type, oci::MEDIA_OCI_INDEX);
        assert_ne!(new.digest, idx.digest);
        let kids = oci::children(&new, &put[1].1).unwrap();
        assert_eq!(kids[0].media_type, oci::MEDIA_OCI_MANIFEST);
        assert_eq!(kids[0].digest, put[0].0.digest);
    }

    #[test]
    fn a_docker_manifest_without_a_media_type_gets_one_after_schema_version() {
        let mut mem = Mem::default();
        let config = mem.add(MEDIA_DOCKER_CONFIG, b"{}");
        let text = format!(
            r#"{{"schemaVersion":2,"config":{},"layers":[]}}"#,
            desc_json(&config)
        );
        let m = mem.add_json(oci::MEDIA_DOCKER_MANIFEST, &text);
        let (_, put) = convert(&mem, &m);
        let got = String::from_utf8(put[0].1.clone()).unwrap();
        assert!(
            got.starts_with(&format!(
                r#"{{"schemaVersion":2,"mediaType":"{}","config":"#,
                oci::MEDIA_OCI_MANIFEST
            )),
            "{got}"
        );
    }

    #[test]
    fn a_docker_media_type_inside_a_manifest_an_oci_descriptor_names_is_converted_too() {
        let mut mem = Mem::default();
        let config = mem.add(MEDIA_OCI_CONFIG, b"{}");
        let text = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","config":{},"layers":[]}}"#,
            oci::MEDIA_DOCKER_MANIFEST,
            desc_json(&config)
        );
        let m = mem.add_json(oci::MEDIA_OCI_MANIFEST, &text);
        let (new, put) = convert(&mem, &m);
        assert_eq!(new.media_type, oci::MEDIA_OCI_MANIFEST);
        assert_eq!(
            String::from_utf8(put[0].1.clone()).unwrap(),
            text.replace(oci::MEDIA_DOCKER_MANIFEST, oci::MEDIA_OCI_MANIFEST)
        );
    }

    #[test]
    fn bad_input_fails_naming_the_blob_and_puts_nothing() {
        let mut mem = Mem::default();
        let config = mem.add(MEDIA_DOCKER_CONFIG, b"{}");
        let cases = [
            "not json".to_owned(),
            "[1]".to_owned(),
            r#"{"schemaVersion":2,"layers":[]}"#.to_owned(),
            format!(
                r#"{{"schemaVersion":2,"mediaType":"{}","config":{},"layers":[]}}"#,
                oci::MEDIA_DOCKER_LIST,
                desc_json(&config)
            ),
            format!(
                r#"{{"schemaVersion":2,"config":{},"layers":[{{"mediaType":"x"}}]}}"#,
                desc_json(&config)
            ),
        ];
        for text in cases {
            let m = mem.add_json(oci::MEDIA_DOCKER_MANIFEST, &text);
            let mut puts = 0;
            let err = to_oci(
                &mem,
                &mut |_: &Descriptor, _: &[u8]| {
                    puts += 1;
                    Ok(())
                },
                &m,
            )
            .unwrap_err();
            assert!(
                err.to_string().contains(&m.digest.to_string()),
                "{text}: {err}"
            );
            assert_eq!(puts, 0, "{text}");
        }
    }

    #[test]
    fn an_index_nested_too_deep_is_refused() {
        let mut mem = Mem::default();
        let (mut d, _, _) = docker_image(&mut mem);
        for _ in 0..=MAX_DEPTH {
            d = mem.add_json(
                oci::MEDIA_DOCKER_LIST,
                &format!(r#"{{"schemaVersion":2,"manifests":[{}]}}"#, desc_json(&d)),
            );
        }
        let err = to_oci(&mem, &mut |_: &Descriptor, _: &[u8]| Ok(()), &d).unwrap_err();
        assert!(err.to_string().contains("nested deeper"), "{err}");
    }
}
