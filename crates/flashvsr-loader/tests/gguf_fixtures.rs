//! Every GGUF fixture (written by gguf-py and a byte writer) parses to the expected header and
//! every tensor matches the reference values bit for bit.

use candle_core::{DType, Device, Tensor};
use flashvsr_loader::gguf::{self, Value};
use flashvsr_loader::{ShapeSource, WeightStore};
use serde_json::Value as J;

mod common;
use common::{bits, GGUF};

fn expected(stem: &str) -> J {
    let s = std::fs::read_to_string(format!("{GGUF}/{stem}.expected.json")).unwrap();
    serde_json::from_str(&s).unwrap()
}

fn bits_of(j: &J) -> u64 {
    u64::from_str_radix(j.as_str().unwrap().trim_start_matches("0x"), 16).unwrap()
}

fn check_scalar(key: &str, exp: &J, bits: Option<&J>, got: &Value) {
    match got {
        Value::F32(v) => match bits {
            Some(b) => assert_eq!(v.to_bits() as u64, bits_of(b), "{key}"),
            None => assert_eq!(*v as f64, exp.as_f64().unwrap(), "{key}"),
        },
        Value::F64(v) => match bits {
            Some(b) => assert_eq!(v.to_bits(), bits_of(b), "{key}"),
            None => assert_eq!(*v, exp.as_f64().unwrap(), "{key}"),
        },
        Value::Bool(b) => assert_eq!(Some(*b), exp.as_bool(), "{key}"),
        Value::Str(s) => assert_eq!(Some(s.as_str()), exp.as_str(), "{key}"),
        Value::Array(..) => check_value(key, exp, got),
        other => {
            let want = exp
                .as_i64()
                .map(|v| v as i128)
                .or_else(|| exp.as_u64().map(|v| v as i128))
                .unwrap_or_else(|| panic!("{key}: expected an integer, got {exp}"));
            assert_eq!(other.as_int(), Some(want), "{key}");
        }
    }
}

fn check_value(key: &str, exp: &J, got: &Value) {
    assert_eq!(
        exp["type"].as_str().unwrap(),
        got.type_name(),
        "{key}: type"
    );
    match got {
        Value::Array(elem, items) => {
            assert_eq!(
                exp["elem_type"].as_str().unwrap(),
                gguf::type_name(*elem),
                "{key}"
            );
            let ev = exp["value"].as_array().unwrap();
            assert_eq!(ev.len(), items.len(), "{key}: array length");
            for (i, (e, g)) in ev.iter().zip(items).enumerate() {
                let bits = exp.get("bits").map(|b| &b[i]);
                check_scalar(&format!("{key}[{i}]"), e, bits, g);
            }
        }
        _ => check_scalar(key, &exp["value"], exp.get("bits"), got),
    }
}

fn check_file(stem: &str) {
    let path = format!("{GGUF}/{stem}.gguf");
    let exp = expected(stem);
    let bytes = std::fs::read(&path).unwrap();
    let header = gguf::parse(&bytes).unwrap();
    assert_eq!(header.version as u64, exp["gguf_version"].as_u64().unwrap());
    assert_eq!(header.alignment, exp["alignment"].as_u64().unwrap());
    assert_eq!(header.header_end, exp["header_end"].as_u64().unwrap());
    if !header.tensors.is_empty() {
        assert_eq!(
            header.data_offset,
            exp["tensor_data_offset"].as_u64().unwrap()
        );
    }
    let em = exp["metadata"].as_object().unwrap();
    assert_eq!(header.metadata.len(), em.len(), "{stem}: metadata count");
    for (k, v) in &header.metadata {
        check_value(k, &em[k.as_str()], v);
    }

    let store = WeightStore::open(&[&path]).unwrap();
    let et = exp["tensors"].as_array().unwrap();
    assert_eq!(store.len(), et.len());
    let npz = if et.is_empty() {
        vec![]
    } else {
        Tensor::read_npz(format!("{GGUF}/{stem}.expected.npz")).unwrap()
    };
    for t in et {
        let name = t["name"].as_str().unwrap();
        let info = store.info(name).unwrap();
        let shape: Vec<usize> = serde_json::from_value(t["shape"].clone()).unwrap();
        let stored: Vec<usize> = serde_json::from_value(t["stored_shape"].clone()).unwrap();
        assert_eq!(info.shape, shape, "{name}");
        assert_eq!(info.stored_shape, stored, "{name}");
        assert_eq!(info.dtype, t["ggml_type"].as_str().unwrap(), "{name}");
        assert_eq!(info.offset, t["abs_offset"].as_u64(), "{name}");
        assert_eq!(info.nbytes, t["nbytes"].as_u64(), "{name}");
        let src = match info.shape_source {
            ShapeSource::OrigShape => "orig_shape",
            ShapeSource::RawShape => "raw_shape",
            ShapeSource::GenuineNd | ShapeSource::GgmlDims => "ggml dims",
            ShapeSource::Native => "native",
        };
        assert_eq!(src, t["shape_source"].as_str().unwrap(), "{name}");
        if info.stored_shape.len() > 4 {
            assert_eq!(info.shape_source, ShapeSource::GenuineNd);
        }

        let want = &npz.iter().find(|(n, _)| n == name).unwrap().1;
        let got = store.tensor(name, DType::F32, &Device::Cpu).unwrap();
        assert_eq!(got.dims(), want.dims(), "{name}");
        let (g, w) = (bits(&got), bits(want));
        let diff = g.iter().zip(&w).filter(|(a, b)| a != b).count();
        assert_eq!(diff, 0, "{stem}/{name}: {diff} values differ bitwise");

        // F16/BF16 stay in their own type when asked for it.
        if info.dtype == "F16" || info.dtype == "BF16" {
            let dt = if info.dtype == "F16" {
                DType::F16
            } else {
                DType::BF16
            };
            let native = store.tensor(name, dt, &Device::Cpu).unwrap();
            assert_eq!(native.dtype(), dt);
            assert_eq!(bits(&native), w, "{name} as {dt:?}");
        }
    }
}

#[test]
fn types() {
    check_file("types");
}

#[test]
fn types_extra_decodes_q8_1_iq4_nl_iq4_xs() {
    check_file("types-extra");
}

#[test]
fn meta_all_value_types() {
    check_file("meta");
}

#[test]
fn meta_edge() {
    check_file("meta-edge");
}

#[test]
fn nd_orig_shape() {
    check_file("nd-orig-shape");
}

#[test]
fn nd_raw_shape() {
    check_file("nd-raw-shape");
}

#[test]
fn nd_genuine_5d() {
    check_file("nd-genuine-5d");
}

#[test]
fn quantized_stays_quantized() {
    let store = WeightStore::open(&[format!("{GGUF}/types.gguf")]).unwrap();
    let q = store.qtensor("q4_k.rand", &Device::Cpu).unwrap();
    assert_eq!(q.dtype(), candle_core::quantized::GgmlDType::Q4K);
    assert_eq!(q.shape().dims(), &[4, 512]);
    let deq = q.dequantize(&Device::Cpu).unwrap();
    let direct = store.tensor("q4_k.rand", DType::F32, &Device::Cpu).unwrap();
    let d = (deq - direct)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert_eq!(d, 0.0);
    // QMatMul works from it.
    let mm = candle_core::quantized::QMatMul::from_qtensor(q).unwrap();
    let x = Tensor::ones((2, 512), DType::F32, &Device::Cpu).unwrap();
    let y = candle_core::Module::forward(&mm, &x).unwrap();
    assert_eq!(y.dims(), &[2, 4]);
    // A type candle cannot hold quantized says so and names the tensor.
    let store = WeightStore::open(&[format!("{GGUF}/types-extra.gguf")]).unwrap();
    let e = store
        .qtensor("iq4_xs.rand", &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(e.contains("iq4_xs.rand") && e.contains("IQ4_XS"), "{e}");
}

#[test]
fn reshape_by_element_count() {
    let store = WeightStore::open(&[format!("{GGUF}/types.gguf")]).unwrap();
    let t = store
        .tensor_as("f32", &[1, 4, 512], DType::F32, &Device::Cpu)
        .unwrap();
    assert_eq!(t.dims(), &[1, 4, 512]);
    let e = store
        .tensor_as("f32", &[3, 512], DType::F32, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("types.gguf")
            && e.contains("'f32'")
            && e.contains("[3, 512]")
            && e.contains("[4, 512]"),
        "{e}"
    );
}
