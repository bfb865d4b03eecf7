//! Rewrites the operators that candle-onnx does not run (or runs only in part) into ones it
//! does, before the graph is ever evaluated: what TensorFlow exports through tf2onnx and
//! PyTorch exports need. Anything still unsupported afterwards is a load error naming the op.
//!
//! - `AveragePool` with pads -> zero padding + `AveragePool`, divided by the pooled count of
//!   valid cells when `count_include_pad = 0` (TensorFlow's 'same' average pooling).
//! - `MaxPool` with pads -> shift by the tensor's minimum, zero padding, `MaxPool`, shift back
//!   (padding must never win the max).
//!
//! candle-onnx's `Pad` knows only `reflect`, so zero padding is built from `Shape`,
//! `ConstantOfShape` and `Concat`.
//! - `GlobalAveragePool` -> `ReduceMean` over H and W.
//! - `ReduceMean` with `axes` as an input (opset 18) -> the attribute form candle reads (it
//!   would otherwise average over every axis, silently).

use std::collections::HashMap;

use candle_onnx::onnx::attribute_proto::AttributeType;
use candle_onnx::onnx::tensor_proto::DataType;
use candle_onnx::onnx::{AttributeProto, GraphProto, NodeProto, TensorProto};

/// Operators candle-onnx 0.11 evaluates (its `simple_eval`).
const SUPPORTED: &[&str] = &[
    "Abs",
    "Add",
    "And",
    "ArgMax",
    "ArgMin",
    "AveragePool",
    "BatchNormalization",
    "Cast",
    "Ceil",
    "Clip",
    "Concat",
    "Constant",
    "ConstantOfShape",
    "Conv",
    "Cos",
    "CumSum",
    "Div",
    "Dropout",
    "Equal",
    "Erf",
    "Exp",
    "Expand",
    "Flatten",
    "Floor",
    "Gather",
    "GatherElements",
    "Gelu",
    "Gemm",
    "Greater",
    "GreaterOrEqual",
    "HardSwish",
    "Identity",
    "If",
    "LSTM",
    "LeakyRelu",
    "Less",
    "LessOrEqual",
    "Log",
    "LogSoftmax",
    "MatMul",
    "MaxPool",
    "Min",
    "Mul",
    "Neg",
    "Not",
    "OneHot",
    "Or",
    "PRelu",
    "Pad",
    "Pow",
    "RNN",
    "Range",
    "ReduceMax",
    "ReduceMean",
    "ReduceMin",
    "ReduceSum",
    "Relu",
    "Reshape",
    "Resize",
    "ScatterND",
    "Selu",
    "Shape",
    "Sigmoid",
    "Sign",
    "Sin",
    "Size",
    "Slice",
    "Softmax",
    "Split",
    "Sqrt",
    "Squeeze",
    "Sub",
    "Tanh",
    "Tile",
    "Transpose",
    "Trilu",
    "Unsqueeze",
    "Where",
    "Xor",
];

pub fn rewrite(graph: &mut GraphProto) -> Result<(), String> {
    let initializers: HashMap<String, TensorProto> = graph
        .initializer
        .iter()
        .map(|t| (t.name.clone(), t.clone()))
        .collect();
    let mut out = Vec::with_capacity(graph.node.len());
    let mut added = Vec::new();
    let mut fresh = Fresh(0);
    for node in std::mem::take(&mut graph.node) {
        let at = |m: String| format!("node '{}' ({}): {m}", node.name, node.op_type);
        match node.op_type.as_str() {
            "AveragePool" if has_pads(&node) => {
                average_pool(node.clone(), &mut out, &mut added, &mut fresh).map_err(at)?
            }
            "MaxPool" if has_pads(&node) => {
                max_pool(node.clone(), &mut out, &mut added, &mut fresh).map_err(at)?
            }
            "Pad" if attr(&node, "mode").is_none_or(|a| a.s == b"constant") => {
                let pads = node
                    .input
                    .get(1)
                    .and_then(|p| initializers.get(p))
                    .ok_or_else(|| at("pads must be a constant initializer".into()))
                    .and_then(|t| int64s(t).map_err(at))?;
                let zero_fill = match node.input.get(2).filter(|v| !v.is_empty()) {
                    None => true,
                    Some(v) => initializers.get(v).is_some_and(|t| {
                        t.float_data.iter().all(|f| *f == 0.0) && t.raw_data.iter().all(|b| *b == 0)
                    }),
                };
                let [0, 0, t, l, 0, 0, b, r] = pads[..] else {
                    return Err(at(format!(
                        "only H/W padding of NCHW tensors is supported, not {pads:?}"
                    )));
                };
                if !zero_fill {
                    return Err(at("only zero padding is supported".into()));
                }
                let padded = zero_pad(
                    node.input[0].clone(),
                    [t, l, b, r],
                    &mut out,
                    &mut added,
                    &mut fresh,
                    &node.name,
                );
                out.push(self::node(
                    "Identity",
                    fresh.name(&node.name, "out"),
                    vec![padded],
                    node.output[0].clone(),
                    vec![],
                ));
            }
            "GlobalAveragePool" => {
                let mut n = node;
                n.op_type = "ReduceMean".into();
                n.attribute = vec![ints("axes", &[2, 3]), int("keepdims", 1)];
                out.push(n);
            }
            "ReduceMean" if node.input.len() > 1 && !node.input[1].is_empty() => {
                let axes = initializers
                    .get(&node.input[1])
                    .ok_or_else(|| at("axes must be a constant initializer".into()))?;
                let axes = int64s(axes).map_err(at)?;
                let mut n = node;
                n.input.truncate(1);
                n.attribute.retain(|a| a.name != "axes");
                n.attribute.push(ints("axes", &axes));
                out.push(n);
            }
            op if !SUPPORTED.contains(&op)
                || !node.domain.is_empty() && node.domain != "ai.onnx" =>
            {
                return Err(at(format!(
                    "operator {}{op} is not supported by Siesta's ONNX engine",
                    if node.domain.is_empty() {
                        String::new()
                    } else {
                        format!("{}.", node.domain)
                    }
                )));
            }
            _ => out.push(node),
        }
    }
    graph.node = out;
    graph.initializer.extend(added);
    Ok(())
}

struct Fresh(usize);

impl Fresh {
    fn name(&mut self, base: &str, what: &str) -> String {
        self.0 += 1;
        format!("{base}__siesta_{what}_{}", self.0)
    }
}

fn attr<'a>(node: &'a NodeProto, name: &str) -> Option<&'a AttributeProto> {
    node.attribute.iter().find(|a| a.name == name)
}

fn has_pads(node: &NodeProto) -> bool {
    attr(node, "pads").is_some_and(|a| a.ints.iter().any(|&p| p != 0))
}

fn int(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Int as i32,
        i: v,
        ..Default::default()
    }
}

fn ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Ints as i32,
        ints: v.to_vec(),
        ..Default::default()
    }
}

fn int64s(t: &TensorProto) -> Result<Vec<i64>, String> {
    if t.data_type != DataType::Int64 as i32 {
        return Err("axes must be int64".into());
    }
    if !t.int64_data.is_empty() {
        return Ok(t.int64_data.clone());
    }
    Ok(t.raw_data
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")))
        .collect())
}

fn int64_tensor(name: String, v: &[i64]) -> TensorProto {
    TensorProto {
        name,
        dims: vec![v.len() as i64],
        data_type: DataType::Int64 as i32,
        int64_data: v.to_vec(),
        ..Default::default()
    }
}

fn node(
    op: &str,
    name: String,
    inputs: Vec<String>,
    output: String,
    attribute: Vec<AttributeProto>,
) -> NodeProto {
    NodeProto {
        op_type: op.into(),
        name,
        input: inputs,
        output: vec![output],
        attribute,
        ..Default::default()
    }
}

/// The pool's `pads` ([top, left, bottom, right]), and the node without them.
fn split_pads(mut n: NodeProto) -> Result<(NodeProto, [i64; 4]), String> {
    if attr(&n, "auto_pad").is_some_and(|a| !a.s.is_empty() && a.s != b"NOTSET") {
        return Err("auto_pad together with pads is not supported".into());
    }
    if attr(&n, "ceil_mode").is_some_and(|a| a.i != 0) {
        return Err("ceil_mode = 1 is not supported".into());
    }
    let pads = attr(&n, "pads").map(|a| a.ints.clone()).unwrap_or_default();
    let [t, l, b, r] = pads[..] else {
        return Err(format!("only 2-D pooling is supported (pads {pads:?})"));
    };
    n.attribute
        .retain(|a| a.name != "pads" && a.name != "count_include_pad");
    Ok((n, [t, l, b, r]))
}

fn float_value(v: f32) -> AttributeProto {
    AttributeProto {
        name: "value".into(),
        r#type: AttributeType::Tensor as i32,
        t: Some(TensorProto {
            dims: vec![1],
            data_type: DataType::Float as i32,
            // candle-onnx reads attribute tensors from raw_data only.
            raw_data: v.to_le_bytes().to_vec(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Zero padding of an NCHW tensor from supported ops only (candle-onnx's `Pad` knows only
/// `reflect`): zeros of the right shape (`Shape`, masked and offset, `ConstantOfShape`) are
/// concatenated on each side, W first, then H.
fn zero_pad(
    x: String,
    [t, l, b, r]: [i64; 4],
    out: &mut Vec<NodeProto>,
    added: &mut Vec<TensorProto>,
    fresh: &mut Fresh,
    base: &str,
) -> String {
    let mut cur = x;
    for (axis, before, after) in [(3usize, l, r), (2usize, t, b)] {
        if before == 0 && after == 0 {
            continue;
        }
        let shape = fresh.name(base, "shape");
        out.push(node(
            "Shape",
            fresh.name(base, "shape_op"),
            vec![cur.clone()],
            shape.clone(),
            vec![],
        ));
        let mut mask = [1i64; 4];
        mask[axis] = 0;
        let mask_name = fresh.name(base, "mask");
        added.push(int64_tensor(mask_name.clone(), &mask));
        let masked = fresh.name(base, "masked");
        out.push(node(
            "Mul",
            fresh.name(base, "mask_op"),
            vec![shape, mask_name],
            masked.clone(),
            vec![],
        ));
        let mut parts = Vec::new();
        for (side, width) in [("before", before), ("after", after)] {
            if width == 0 {
                parts.push(None);
                continue;
            }
            let mut offset = [0i64; 4];
            offset[axis] = width;
            let offset_name = fresh.name(base, "offset");
            added.push(int64_tensor(offset_name.clone(), &offset));
            let side_shape = fresh.name(base, side);
            out.push(node(
                "Add",
                fresh.name(base, "offset_op"),
                vec![masked.clone(), offset_name],
                side_shape.clone(),
                vec![],
            ));
            let zeros = fresh.name(base, "zeros");
            out.push(node(
                "ConstantOfShape",
                fresh.name(base, "zeros_op"),
                vec![side_shape],
                zeros.clone(),
                vec![float_value(0.0)],
            ));
            parts.push(Some(zeros));
        }
        let inputs: Vec<String> = [parts[0].clone(), Some(cur), parts[1].clone()]
            .into_iter()
            .flatten()
            .collect();
        let padded = fresh.name(base, "padded");
        out.push(node(
            "Concat",
            fresh.name(base, "concat"),
            inputs,
            padded.clone(),
            vec![int("axis", axis as i64)],
        ));
        cur = padded;
    }
    cur
}

fn average_pool(
    n: NodeProto,
    out: &mut Vec<NodeProto>,
    added: &mut Vec<TensorProto>,
    fresh: &mut Fresh,
) -> Result<(), String> {
    // ONNX's default is to exclude the padding from the count.
    let include_pad = attr(&n, "count_include_pad").is_some_and(|a| a.i != 0);
    let (pool, pads) = split_pads(n)?;
    let (x, y, base) = (
        pool.input[0].clone(),
        pool.output[0].clone(),
        pool.name.clone(),
    );
    let padded = zero_pad(x.clone(), pads, out, added, fresh, &base);
    let mut sum = pool.clone();
    sum.input = vec![padded];
    if include_pad {
        out.push(sum);
        return Ok(());
    }
    let pooled = fresh.name(&base, "pooled");
    sum.output = vec![pooled.clone()];
    out.push(sum);
    // count = pool(pad(ones)) = valid cells / window size; pooled / count = mean over valid cells.
    let shape = fresh.name(&base, "shape");
    out.push(node(
        "Shape",
        fresh.name(&base, "shape_op"),
        vec![x],
        shape.clone(),
        vec![],
    ));
    let ones = fresh.name(&base, "ones");
    out.push(node(
        "ConstantOfShape",
        fresh.name(&base, "ones_op"),
        vec![shape],
        ones.clone(),
        vec![float_value(1.0)],
    ));
    let ones_padded = zero_pad(ones, pads, out, added, fresh, &base);
    let count = fresh.name(&base, "count");
    let mut count_pool = pool.clone();
    count_pool.name = fresh.name(&base, "count_op");
    count_pool.input = vec![ones_padded];
    count_pool.output = vec![count.clone()];
    out.push(count_pool);
    out.push(node(
        "Div",
        fresh.name(&base, "div"),
        vec![pooled, count],
        y,
        vec![],
    ));
    Ok(())
}

fn max_pool(
    n: NodeProto,
    out: &mut Vec<NodeProto>,
    added: &mut Vec<TensorProto>,
    fresh: &mut Fresh,
) -> Result<(), String> {
    if n.output.len() > 1 {
        return Err("MaxPool's Indices output is not supported".into());
    }
    let (pool, pads) = split_pads(n)?;
    let (x, y, base) = (
        pool.input[0].clone(),
        pool.output[0].clone(),
        pool.name.clone(),
    );
    let min = fresh.name(&base, "min");
    out.push(node(
        "ReduceMin",
        fresh.name(&base, "min_op"),
        vec![x.clone()],
        min.clone(),
        vec![int("keepdims", 1)],
    ));
    let shifted = fresh.name(&base, "shifted");
    out.push(node(
        "Sub",
        fresh.name(&base, "sub"),
        vec![x, min.clone()],
        shifted.clone(),
        vec![],
    ));
    let padded = zero_pad(shifted, pads, out, added, fresh, &base);
    let pooled = fresh.name(&base, "pooled");
    let mut p = pool;
    p.input = vec![padded];
    p.output = vec![pooled.clone()];
    out.push(p);
    out.push(node(
        "Add",
        fresh.name(&base, "add"),
        vec![pooled, min],
        y,
        vec![],
    ));
    Ok(())
}
