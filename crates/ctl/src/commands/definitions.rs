//! `export FILE` and `import FILE`: the definitions document (`/api/definitions`, or
//! `/api/definitions/{vhost}` with --vhost), `-` standing for stdout/stdin.
//!
//! Owns: reading and writing definitions files. The document is sent as it was read (after
//! checking it is JSON), so nothing the broker knows is lost on the way.

use std::io::{Read, Write};

use super::{out, Ctx};
use crate::error::CtlError;
use crate::path::{api, segment};

fn definitions_path(ctx: &Ctx) -> String {
    match ctx.vhost.as_deref() {
        Some(vhost) => api(&["definitions", &segment(vhost)]),
        None => api(&["definitions"]),
    }
}

pub fn export(ctx: &Ctx, file: &str) -> Result<(), CtlError> {
    let document = ctx.client.get(&definitions_path(ctx))?;
    let mut text = serde_json::to_string_pretty(&document)
        .map_err(|e| CtlError::local(format!("cannot format the definitions: {e}")))?;
    text.push('\n');
    if file == "-" {
        out(&text);
        return Ok(());
    }
    let mut f = std::fs::File::create(file)
        .map_err(|e| CtlError::local(format!("cannot create {file}: {e}")))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| CtlError::local(format!("cannot write {file}: {e}")))?;
    eprintln!("exported definitions to {file}");
    Ok(())
}

pub fn import(ctx: &Ctx, file: &str) -> Result<(), CtlError> {
    let bytes = if file == "-" {
        let mut bytes = Vec::new();
        std::io::stdin()
            .read_to_end(&mut bytes)
            .map_err(|e| CtlError::local(format!("cannot read stdin: {e}")))?;
        bytes
    } else {
        std::fs::read(file).map_err(|e| CtlError::local(format!("cannot read {file}: {e}")))?
    };
    if let Err(e) = serde_json::from_slice::<serde_json::Value>(&bytes) {
        return Err(CtlError::usage(format!("{file} is not JSON: {e}")));
    }
    let answer = ctx.client.post_raw(&definitions_path(ctx), &bytes)?;
    ctx.done(
        &format!("imported definitions from {file}"),
        answer.body.as_ref(),
    );
    Ok(())
}
