//! Reader for the `.pkl` companion file of MMGeneration SinGAN checkpoints.
//!
//! MMGeneration's `PickleDataHook` writes the file with Python's `pickle.dump` (protocol 3 or 4) as a
//! dict `{'noise_weights': [...], 'fixed_noises': [numpy arrays], 'curr_stage': int}`. Each array is
//! pickled by numpy as `_reconstruct(ndarray, (0,), b'b')` followed by `BUILD` with the state tuple
//! `(1, shape, dtype, is_fortran, raw_bytes)`, where the dtype is itself `dtype('f4', False, True)`
//! followed by `BUILD` with `(3, '<', ...)`.
//!
//! The reader is a small pickle machine for protocols 2–4 that supports only the opcodes and globals such
//! a file uses, so it never runs arbitrary callables. It works on an arena of values addressed by
//! index: the memo then shares values as Python does (a dtype memoised before its `BUILD` is seen
//! built through a later `BINGET`), nothing is copied, and no value is ever dropped recursively.
//! Every length is checked against the remaining input, and the number of values is capped, so memory
//! stays proportional to the input and corrupt input returns an error.

use crate::error::{Error, Result};

/// Content of a SinGAN `.pkl` file.
#[derive(Debug, Clone, PartialEq)]
pub struct SinGanPickle {
    /// Noise amplitude of every stage, `[w_0, …, w_S]` (the file may store each as an int or a float).
    pub noise_weights: Vec<f64>,
    /// Fixed reconstruction noise of every stage: the numpy shape and the values in C order.
    pub fixed_noises: Vec<(Vec<usize>, Vec<f32>)>,
    /// Last trained stage `S`.
    pub curr_stage: usize,
}

/// Parses the bytes of a SinGAN `.pkl` file.
///
/// Errors are [`Error::InvalidModel`]: truncated data, an opcode or global that such a file never
/// contains, a missing key, or an array that is not float32.
pub fn read_singan_pickle(bytes: &[u8]) -> Result<SinGanPickle> {
    let mut machine = Machine::new(bytes);
    let root = machine.run()?;
    extract_singan_data(&machine.arena, root)
}

/// Maximum number of values one file may create, which keeps the arena of a hostile input small.
/// A SinGAN file creates a few dozen values per stage, so only input that cannot be SinGAN data reaches it.
const MAX_VALUES: usize = 1 << 20;

/// Index of a value in the arena.
type ValueId = usize;

/// A Python value, as far as SinGAN data needs one.
#[derive(Debug)]
enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    List(Vec<ValueId>),
    Tuple(Vec<ValueId>),
    Dict(Vec<(ValueId, ValueId)>),
    Global(Global),
    Object(Object),
}

impl Value {
    /// Python-style type name for error messages.
    fn type_name(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "str",
            Value::Bytes(_) => "bytes",
            Value::List(_) => "list",
            Value::Tuple(_) => "tuple",
            Value::Dict(_) => "dict",
            Value::Global(_) => "class or function",
            Value::Object(object) => match object.kind {
                ObjectKind::NdArray => "numpy.ndarray",
                ObjectKind::Dtype { .. } => "numpy.dtype",
            },
        }
    }
}

/// The globals that a SinGAN file references; any other global is rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Global {
    /// `numpy.core.multiarray._reconstruct` (`numpy._core.multiarray` from numpy 2 on).
    Reconstruct,
    /// `numpy.ndarray`.
    NdArray,
    /// `numpy.dtype`.
    Dtype,
    /// `_codecs.encode`: protocol 2 stores `bytes` as `encode(latin-1 text, 'latin1')`.
    CodecsEncode,
    /// `builtins.bytes` (`__builtin__.bytes` in protocol 2): protocol 2 stores empty `bytes` as `bytes()`.
    Bytes,
}

impl Global {
    fn python_name(self) -> &'static str {
        match self {
            Global::Reconstruct => "numpy.core.multiarray._reconstruct",
            Global::NdArray => "numpy.ndarray",
            Global::Dtype => "numpy.dtype",
            Global::CodecsEncode => "_codecs.encode",
            Global::Bytes => "builtins.bytes",
        }
    }

    fn resolve(module: &str, name: &str) -> Option<Global> {
        match (module, name) {
            ("numpy.core.multiarray" | "numpy._core.multiarray", "_reconstruct") => Some(Global::Reconstruct),
            ("numpy", "ndarray") => Some(Global::NdArray),
            ("numpy", "dtype") => Some(Global::Dtype),
            ("_codecs", "encode") => Some(Global::CodecsEncode),
            ("builtins" | "__builtin__", "bytes") => Some(Global::Bytes),
            _ => None,
        }
    }
}

/// A numpy object created by `REDUCE`, with the state that `BUILD` gives it.
#[derive(Debug)]
struct Object {
    kind: ObjectKind,
    state: Option<ValueId>,
}

#[derive(Debug)]
enum ObjectKind {
    NdArray,
    /// A numpy dtype with its type string, such as `f4`.
    Dtype {
        descr: String,
    },
}

/// The pickle virtual machine: input cursor, value arena, stack, marks and memo.
struct Machine<'a> {
    input: &'a [u8],
    position: usize,
    arena: Vec<Value>,
    stack: Vec<ValueId>,
    /// Stack lengths at each `MARK`, innermost last.
    marks: Vec<usize>,
    memo: std::collections::HashMap<u32, ValueId>,
}

impl<'a> Machine<'a> {
    fn new(input: &'a [u8]) -> Self {
        Machine {
            input,
            position: 0,
            arena: Vec::new(),
            stack: Vec::new(),
            marks: Vec::new(),
            memo: std::collections::HashMap::new(),
        }
    }

    /// Runs opcodes until `STOP` and returns the value on top of the stack.
    fn run(&mut self) -> Result<ValueId> {
        loop {
            let offset = self.position;
            let opcode = self.read_u8("an opcode")?;
            if opcode == b'.' {
                // STOP: the result is the top of the stack; anything below it is ignored, as in Python.
                return self.pop(offset, "STOP");
            }
            self.step(opcode, offset)?;
        }
    }

    /// Executes one opcode other than `STOP`. `offset` is the opcode's byte offset, for messages.
    fn step(&mut self, opcode: u8, offset: usize) -> Result<()> {
        match opcode {
            // PROTO
            0x80 => {
                let version = self.read_u8("the PROTO version")?;
                if !(2..=4).contains(&version) {
                    return Err(pickle_error(format!(
                        "pickle protocol {version} at byte {offset} is not supported; re-save the file with protocol 2, 3 or 4"
                    )));
                }
            }
            // FRAME: a length prefix for buffered reading; the content follows as ordinary opcodes.
            0x95 => {
                let length = self.read_u64("the FRAME length")?;
                if length > self.remaining() as u64 {
                    return Err(self.truncated(offset, "FRAME", length));
                }
            }
            b'(' => self.marks.push(self.stack.len()),
            b'}' => self.push_new(Value::Dict(Vec::new()))?,
            b']' => self.push_new(Value::List(Vec::new()))?,
            b')' => self.push_new(Value::Tuple(Vec::new()))?,
            b'a' => {
                let item = self.pop(offset, "APPEND")?;
                let list = self.top(offset, "APPEND")?;
                self.list_mut(list, offset, "APPEND")?.push(item);
            }
            b'e' => {
                let items = self.pop_to_mark(offset, "APPENDS")?;
                let list = self.top(offset, "APPENDS")?;
                self.list_mut(list, offset, "APPENDS")?.extend(items);
            }
            b's' => {
                let value = self.pop(offset, "SETITEM")?;
                let key = self.pop(offset, "SETITEM")?;
                let dict = self.top(offset, "SETITEM")?;
                self.dict_mut(dict, offset, "SETITEM")?.push((key, value));
            }
            b'u' => {
                let items = self.pop_to_mark(offset, "SETITEMS")?;
                if items.len() % 2 != 0 {
                    return Err(pickle_error(format!("SETITEMS at byte {offset} has an odd number of items")));
                }
                let dict = self.top(offset, "SETITEMS")?;
                let pairs = items.chunks_exact(2).map(|pair| (pair[0], pair[1]));
                self.dict_mut(dict, offset, "SETITEMS")?.extend(pairs);
            }
            b't' => {
                let items = self.pop_to_mark(offset, "TUPLE")?;
                self.push_new(Value::Tuple(items))?;
            }
            0x85..=0x87 => {
                let count = usize::from(opcode - 0x84);
                if self.available() < count {
                    return Err(pickle_error(format!("TUPLE{count} at byte {offset} needs {count} stack items")));
                }
                let items = self.stack.split_off(self.stack.len() - count);
                self.push_new(Value::Tuple(items))?;
            }
            b'K' => {
                let value = self.read_u8("a BININT1 operand")?;
                self.push_new(Value::Int(i64::from(value)))?;
            }
            b'M' => {
                let bytes = self.read_array::<2>("a BININT2 operand")?;
                self.push_new(Value::Int(i64::from(u16::from_le_bytes(bytes))))?;
            }
            b'J' => {
                let bytes = self.read_array::<4>("a BININT operand")?;
                self.push_new(Value::Int(i64::from(i32::from_le_bytes(bytes))))?;
            }
            // LONG1: a little-endian two's-complement integer of up to 255 bytes; 8 bytes fit an i64.
            0x8a => {
                let length = usize::from(self.read_u8("the LONG1 length")?);
                let bytes = self.read_bytes(length, offset, "LONG1")?;
                if length > 8 {
                    return Err(pickle_error(format!(
                        "LONG1 at byte {offset} has {length} bytes, more than an i64 holds"
                    )));
                }
                let fill = if bytes.last().is_some_and(|b| b & 0x80 != 0) { 0xff } else { 0 };
                let mut buffer = [fill; 8];
                buffer[..length].copy_from_slice(bytes);
                self.push_new(Value::Int(i64::from_le_bytes(buffer)))?;
            }
            // BINFLOAT is big-endian, unlike every other number in the format.
            b'G' => {
                let bytes = self.read_array::<8>("a BINFLOAT operand")?;
                self.push_new(Value::Float(f64::from_be_bytes(bytes)))?;
            }
            0x88 => self.push_new(Value::Bool(true))?,
            0x89 => self.push_new(Value::Bool(false))?,
            b'N' => self.push_new(Value::None)?,
            0x8c => {
                let length = u64::from(self.read_u8("the SHORT_BINUNICODE length")?);
                self.read_unicode(length, offset, "SHORT_BINUNICODE")?;
            }
            b'X' => {
                let length = u64::from(u32::from_le_bytes(self.read_array::<4>("the BINUNICODE length")?));
                self.read_unicode(length, offset, "BINUNICODE")?;
            }
            0x8d => {
                let length = self.read_u64("the BINUNICODE8 length")?;
                self.read_unicode(length, offset, "BINUNICODE8")?;
            }
            b'C' => {
                let length = u64::from(self.read_u8("the SHORT_BINBYTES length")?);
                self.read_binary(length, offset, "SHORT_BINBYTES")?;
            }
            b'B' => {
                let length = u64::from(u32::from_le_bytes(self.read_array::<4>("the BINBYTES length")?));
                self.read_binary(length, offset, "BINBYTES")?;
            }
            0x8e => {
                let length = self.read_u64("the BINBYTES8 length")?;
                self.read_binary(length, offset, "BINBYTES8")?;
            }
            b'c' => {
                let module = self.read_line(offset, "GLOBAL")?;
                let name = self.read_line(offset, "GLOBAL")?;
                self.push_global(&module, &name, offset)?;
            }
            0x93 => {
                let name = self.pop(offset, "STACK_GLOBAL")?;
                let module = self.pop(offset, "STACK_GLOBAL")?;
                let (module, name) = match (&self.arena[module], &self.arena[name]) {
                    (Value::Str(module), Value::Str(name)) => (module.clone(), name.clone()),
                    _ => return Err(pickle_error(format!("STACK_GLOBAL at byte {offset} needs two strings"))),
                };
                self.push_global(&module, &name, offset)?;
            }
            b'R' => {
                let arguments = self.pop(offset, "REDUCE")?;
                let callable = self.pop(offset, "REDUCE")?;
                let value = self.reduce(callable, arguments, offset)?;
                self.push_new(value)?;
            }
            b'b' => {
                let state = self.pop(offset, "BUILD")?;
                let target = self.top(offset, "BUILD")?;
                match &mut self.arena[target] {
                    Value::Object(object) if object.state.is_none() => object.state = Some(state),
                    Value::Object(_) => {
                        return Err(pickle_error(format!("BUILD at byte {offset} sets the state of an object twice")))
                    }
                    other => {
                        return Err(pickle_error(format!(
                            "BUILD at byte {offset} applies to a {}, not to a numpy object",
                            other.type_name()
                        )))
                    }
                }
            }
            b'q' => {
                let index = u32::from(self.read_u8("a BINPUT index")?);
                self.memoize(index, offset, "BINPUT")?;
            }
            b'r' => {
                let index = u32::from_le_bytes(self.read_array::<4>("a LONG_BINPUT index")?);
                self.memoize(index, offset, "LONG_BINPUT")?;
            }
            // MEMOIZE stores under the next free index, which is the memo size.
            0x94 => {
                let index = u32::try_from(self.memo.len())
                    .map_err(|_| pickle_error(format!("memo overflow at byte {offset}")))?;
                self.memoize(index, offset, "MEMOIZE")?;
            }
            b'h' => {
                let index = u32::from(self.read_u8("a BINGET index")?);
                self.recall(index, offset, "BINGET")?;
            }
            b'j' => {
                let index = u32::from_le_bytes(self.read_array::<4>("a LONG_BINGET index")?);
                self.recall(index, offset, "LONG_BINGET")?;
            }
            other => {
                let printable =
                    if other.is_ascii_graphic() { format!(" ('{}')", other as char) } else { String::new() };
                return Err(pickle_error(format!(
                    "opcode 0x{other:02x}{printable} at byte {offset} is not supported in SinGAN data"
                )));
            }
        }
        Ok(())
    }

    /// Applies a supported callable to its argument tuple.
    fn reduce(&self, callable: ValueId, arguments: ValueId, offset: usize) -> Result<Value> {
        let Value::Global(global) = self.arena[callable] else {
            return Err(pickle_error(format!(
                "REDUCE at byte {offset} calls a {}, not a supported class or function",
                self.arena[callable].type_name()
            )));
        };
        let Value::Tuple(arguments) = &self.arena[arguments] else {
            return Err(pickle_error(format!("REDUCE at byte {offset} needs an argument tuple")));
        };
        let arguments: Vec<&Value> = arguments.iter().map(|&id| &self.arena[id]).collect();

        match (global, arguments.as_slice()) {
            // _reconstruct(ndarray, (0,), b'b'): an empty array that BUILD fills in.
            (Global::Reconstruct, [Value::Global(Global::NdArray), _, _]) => {
                Ok(Value::Object(Object { kind: ObjectKind::NdArray, state: None }))
            }
            // dtype('f4', False, True): the byte order comes later with BUILD.
            (Global::Dtype, [Value::Str(descr), _, _]) => {
                Ok(Value::Object(Object { kind: ObjectKind::Dtype { descr: descr.clone() }, state: None }))
            }
            (Global::CodecsEncode, [Value::Str(text), Value::Str(encoding)])
                if matches!(encoding.as_str(), "latin1" | "latin-1") =>
            {
                let bytes = text.chars().map(|c| u8::try_from(u32::from(c))).collect::<Result<Vec<u8>, _>>();
                bytes.map(Value::Bytes).map_err(|_| {
                    pickle_error(format!("REDUCE at byte {offset}: latin-1 text holds a character above U+00FF"))
                })
            }
            (Global::Bytes, []) => Ok(Value::Bytes(Vec::new())),
            (global, arguments) => Err(pickle_error(format!(
                "REDUCE at byte {offset}: {} does not accept the arguments ({})",
                global.python_name(),
                arguments.iter().map(|a| a.type_name()).collect::<Vec<_>>().join(", ")
            ))),
        }
    }

    fn push_global(&mut self, module: &str, name: &str, offset: usize) -> Result<()> {
        let global = Global::resolve(module, name).ok_or_else(|| {
            pickle_error(format!(
                "global {module}.{name} at byte {offset} is not allowed: SinGAN data holds only numbers, lists and numpy float32 arrays"
            ))
        })?;
        self.push_new(Value::Global(global))
    }

    fn push_new(&mut self, value: Value) -> Result<()> {
        if self.arena.len() >= MAX_VALUES {
            return Err(pickle_error(format!(
                "more than {MAX_VALUES} values before byte {}; this is not SinGAN data",
                self.position
            )));
        }
        self.arena.push(value);
        self.stack.push(self.arena.len() - 1);
        Ok(())
    }

    /// Number of stack items above the innermost `MARK`; Python's unpickler cannot reach below it
    /// either, because `MARK` starts a fresh stack.
    fn available(&self) -> usize {
        self.stack.len() - self.marks.last().copied().unwrap_or(0)
    }

    fn pop(&mut self, offset: usize, opcode: &str) -> Result<ValueId> {
        let id = self.top(offset, opcode)?;
        self.stack.pop();
        Ok(id)
    }

    fn top(&self, offset: usize, opcode: &str) -> Result<ValueId> {
        match self.stack.last() {
            Some(&id) if self.available() > 0 => Ok(id),
            _ => Err(pickle_error(format!("{opcode} at byte {offset} finds no stack item above the last MARK"))),
        }
    }

    fn pop_to_mark(&mut self, offset: usize, opcode: &str) -> Result<Vec<ValueId>> {
        let mark = self.marks.pop().ok_or_else(|| pickle_error(format!("{opcode} at byte {offset} has no MARK")))?;
        Ok(self.stack.split_off(mark))
    }

    fn list_mut(&mut self, id: ValueId, offset: usize, opcode: &str) -> Result<&mut Vec<ValueId>> {
        match &mut self.arena[id] {
            Value::List(items) => Ok(items),
            other => {
                Err(pickle_error(format!("{opcode} at byte {offset} applies to a {}, not a list", other.type_name())))
            }
        }
    }

    fn dict_mut(&mut self, id: ValueId, offset: usize, opcode: &str) -> Result<&mut Vec<(ValueId, ValueId)>> {
        match &mut self.arena[id] {
            Value::Dict(items) => Ok(items),
            other => {
                Err(pickle_error(format!("{opcode} at byte {offset} applies to a {}, not a dict", other.type_name())))
            }
        }
    }

    fn memoize(&mut self, index: u32, offset: usize, opcode: &str) -> Result<()> {
        let top = self.top(offset, opcode)?;
        self.memo.insert(index, top);
        Ok(())
    }

    fn recall(&mut self, index: u32, offset: usize, opcode: &str) -> Result<()> {
        let id = *self.memo.get(&index).ok_or_else(|| {
            pickle_error(format!("{opcode} at byte {offset} reads memo entry {index}, which was never stored"))
        })?;
        self.stack.push(id);
        Ok(())
    }

    fn read_unicode(&mut self, length: u64, offset: usize, opcode: &str) -> Result<()> {
        let bytes = self.read_length_prefixed(length, offset, opcode)?;
        let text = std::str::from_utf8(bytes)
            .map_err(|e| pickle_error(format!("{opcode} at byte {offset} is not valid UTF-8: {e}")))?
            .to_owned();
        self.push_new(Value::Str(text))
    }

    fn read_binary(&mut self, length: u64, offset: usize, opcode: &str) -> Result<()> {
        let bytes = self.read_length_prefixed(length, offset, opcode)?.to_vec();
        self.push_new(Value::Bytes(bytes))
    }

    fn read_length_prefixed(&mut self, length: u64, offset: usize, opcode: &str) -> Result<&'a [u8]> {
        if length > self.remaining() as u64 {
            return Err(self.truncated(offset, opcode, length));
        }
        self.read_bytes(length as usize, offset, opcode)
    }

    fn remaining(&self) -> usize {
        self.input.len() - self.position
    }

    fn read_bytes(&mut self, length: usize, offset: usize, opcode: &str) -> Result<&'a [u8]> {
        if length > self.remaining() {
            return Err(self.truncated(offset, opcode, length as u64));
        }
        let bytes = &self.input[self.position..self.position + length];
        self.position += length;
        Ok(bytes)
    }

    fn read_u8(&mut self, operand: &str) -> Result<u8> {
        let [byte] = self.read_array::<1>(operand)?;
        Ok(byte)
    }

    fn read_u64(&mut self, operand: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.read_array::<8>(operand)?))
    }

    fn read_array<const N: usize>(&mut self, operand: &str) -> Result<[u8; N]> {
        let start = self.position;
        let bytes = self.input.get(start..start + N).ok_or_else(|| {
            pickle_error(format!("data is truncated at byte {start}: expected {operand} ({N} bytes)"))
        })?;
        self.position += N;
        let mut array = [0u8; N];
        array.copy_from_slice(bytes);
        Ok(array)
    }

    /// Reads a newline-terminated ASCII line (the operands of `GLOBAL`).
    fn read_line(&mut self, offset: usize, opcode: &str) -> Result<String> {
        let rest = &self.input[self.position..];
        let end = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| pickle_error(format!("data is truncated: {opcode} at byte {offset} has no line end")))?;
        let line = std::str::from_utf8(&rest[..end])
            .map_err(|_| pickle_error(format!("{opcode} at byte {offset} has a non-text name")))?
            .to_owned();
        self.position += end + 1;
        Ok(line)
    }

    fn truncated(&self, offset: usize, opcode: &str, length: u64) -> Error {
        pickle_error(format!(
            "data is truncated: {opcode} at byte {offset} needs {length} bytes, but {} remain",
            self.remaining()
        ))
    }
}

/// Builds an [`Error::InvalidModel`] about the pickle data.
fn pickle_error(message: String) -> Error {
    Error::model(format!("SinGAN pickle: {message}"))
}

/// Reads the three SinGAN keys from the unpickled root value.
fn extract_singan_data(arena: &[Value], root: ValueId) -> Result<SinGanPickle> {
    let Value::Dict(entries) = &arena[root] else {
        return Err(pickle_error(format!("the top-level value is a {}, not a dict", arena[root].type_name())));
    };
    let lookup = |key: &str| -> Result<ValueId> {
        // A later entry replaces an earlier one with the same key, as in a Python dict.
        entries
            .iter()
            .rev()
            .find(|(k, _)| matches!(&arena[*k], Value::Str(name) if name == key))
            .map(|(_, value)| *value)
            .ok_or_else(|| pickle_error(format!("key '{key}' is missing")))
    };

    let noise_weights = sequence(arena, lookup("noise_weights")?, "noise_weights")?
        .iter()
        .enumerate()
        .map(|(stage, &id)| match arena[id] {
            Value::Int(value) => Ok(value as f64),
            Value::Float(value) => Ok(value),
            ref other => Err(pickle_error(format!("noise_weights[{stage}] is a {}, not a number", other.type_name()))),
        })
        .collect::<Result<Vec<f64>>>()?;

    let fixed_noises = sequence(arena, lookup("fixed_noises")?, "fixed_noises")?
        .iter()
        .enumerate()
        .map(|(stage, &id)| float32_array(arena, id, &format!("fixed_noises[{stage}]")))
        .collect::<Result<Vec<_>>>()?;

    let curr_stage = match arena[lookup("curr_stage")?] {
        Value::Int(stage) => {
            usize::try_from(stage).map_err(|_| pickle_error(format!("curr_stage is {stage}; it must be at least 0")))?
        }
        ref other => return Err(pickle_error(format!("curr_stage is a {}, not an int", other.type_name()))),
    };

    Ok(SinGanPickle { noise_weights, fixed_noises, curr_stage })
}

/// Items of a list or tuple.
fn sequence<'v>(arena: &'v [Value], id: ValueId, name: &str) -> Result<&'v [ValueId]> {
    match &arena[id] {
        Value::List(items) | Value::Tuple(items) => Ok(items),
        other => Err(pickle_error(format!("{name} is a {}, not a list", other.type_name()))),
    }
}

/// Decodes a numpy float32 array: its shape and its values in C order.
fn float32_array(arena: &[Value], id: ValueId, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
    let state = match &arena[id] {
        Value::Object(Object { kind: ObjectKind::NdArray, state: Some(state) }) => *state,
        Value::Object(Object { kind: ObjectKind::NdArray, state: None }) => {
            return Err(pickle_error(format!("{name} is a numpy array without data (no BUILD)")))
        }
        other => return Err(pickle_error(format!("{name} is a {}, not a numpy array", other.type_name()))),
    };
    let fields = sequence(arena, state, &format!("the state of {name}"))?;
    // numpy writes (version, shape, dtype, is_fortran, data); its `__setstate__` also accepts the
    // older form without the version.
    let [shape, dtype, is_fortran, data] = match fields {
        [_, shape, dtype, is_fortran, data] | [shape, dtype, is_fortran, data] => [*shape, *dtype, *is_fortran, *data],
        _ => return Err(pickle_error(format!("the state of {name} has {} fields, expected 4 or 5", fields.len()))),
    };

    let shape = sequence(arena, shape, &format!("the shape of {name}"))?
        .iter()
        .map(|&dim| match arena[dim] {
            Value::Int(size) => usize::try_from(size).ok(),
            _ => None,
        })
        .collect::<Option<Vec<usize>>>()
        .ok_or_else(|| pickle_error(format!("the shape of {name} must hold non-negative ints")))?;
    let big_endian = float32_byte_order(arena, dtype, name)?;
    let Value::Bool(is_fortran) = arena[is_fortran] else {
        return Err(pickle_error(format!("the order flag of {name} is not a bool")));
    };
    let Value::Bytes(data) = &arena[data] else {
        return Err(pickle_error(format!("the data of {name} is a {}, not bytes", arena[data].type_name())));
    };

    let count = shape.iter().try_fold(1usize, |count, &size| count.checked_mul(size));
    if count.and_then(|count| count.checked_mul(4)) != Some(data.len()) {
        return Err(pickle_error(format!(
            "{name} has shape {shape:?} but {} data bytes; float32 needs 4 bytes per element",
            data.len()
        )));
    }
    let values: Vec<f32> = data
        .chunks_exact(4)
        .map(|chunk| {
            let bytes = [chunk[0], chunk[1], chunk[2], chunk[3]];
            if big_endian {
                f32::from_be_bytes(bytes)
            } else {
                f32::from_le_bytes(bytes)
            }
        })
        .collect();
    let values = if is_fortran { fortran_to_c_order(&values, &shape) } else { values };
    Ok((shape, values))
}

/// Checks that a dtype is float32 and returns whether it is big-endian.
fn float32_byte_order(arena: &[Value], dtype: ValueId, name: &str) -> Result<bool> {
    let (descr, state) = match &arena[dtype] {
        Value::Object(Object { kind: ObjectKind::Dtype { descr }, state }) => (descr, *state),
        other => {
            return Err(pickle_error(format!("the dtype of {name} is a {}, not a numpy dtype", other.type_name())))
        }
    };
    if descr != "f4" {
        return Err(pickle_error(format!("{name} has dtype '{descr}'; fixed noises must be float32 ('f4')")));
    }
    // The dtype state is (version, byte order, ...); numpy writes '<' or '>' for float32.
    let byte_order = state
        .and_then(|state| match &arena[state] {
            Value::Tuple(fields) => fields.get(1).copied(),
            _ => None,
        })
        .map(|id| &arena[id]);
    match byte_order {
        Some(Value::Str(order)) if order == "<" => Ok(false),
        Some(Value::Str(order)) if order == ">" => Ok(true),
        _ => Err(pickle_error(format!("the float32 dtype of {name} has no '<' or '>' byte order"))),
    }
}

/// Reorders values stored in Fortran (column-major) order into C (row-major) order.
fn fortran_to_c_order(values: &[f32], shape: &[usize]) -> Vec<f32> {
    let rank = shape.len();
    // Fortran strides: the first axis varies fastest.
    let mut fortran_strides = vec![1usize; rank];
    for axis in 1..rank {
        fortran_strides[axis] = fortran_strides[axis - 1] * shape[axis - 1];
    }
    let mut index = vec![0usize; rank];
    let mut reordered = Vec::with_capacity(values.len());
    for _ in 0..values.len() {
        let source: usize = index.iter().zip(&fortran_strides).map(|(i, s)| i * s).sum();
        reordered.push(values[source]);
        // Advance the C-order multi-index: the last axis varies fastest.
        for axis in (0..rank).rev() {
            index[axis] += 1;
            if index[axis] < shape[axis] {
                break;
            }
            index[axis] = 0;
        }
    }
    reordered
}
