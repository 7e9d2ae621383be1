//! `mixq-run chat`: an interactive conversation in Gemma 3's chat template.
//!
//! The session's KV cache holds the conversation so far, so a turn feeds only its new tokens:
//! the previous reply's `<end_of_turn>`, the user's turn and the opening of the model's turn.
//! [`Conversation`] keeps the exact token sequence the cache holds ([`Conversation::fed`]).
//! When the next turn would not fit in the context, the oldest exchanges are dropped and the
//! rest is read again from position 0 (positions are baked into the cached keys by RoPE, so a
//! shifted history cannot reuse them).
//!
//! Ctrl-C while a reply streams stops that reply (it stays in the history, closed with
//! `<end_of_turn>`); Ctrl-C or Ctrl-D at the prompt ends the session.

use super::generate::SamplingArgs;
use super::model::{with_model, Loaded, ModelArgs, ModelTask};
use anyhow::{bail, Result};
use clap::Args;
use mixq_format::tokenizer::Tokenizer;
use mixq_runtime::backend::Backend;
use mixq_runtime::chat::{self, Role, Turn};
use mixq_runtime::generate::{generate, GenerateOptions, Generation, StopReason};
use mixq_runtime::{Gemma3, Session};
use std::io::{BufRead, Write};
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Args, Debug, Clone)]
pub struct ChatArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Instructions for the whole conversation (Gemma 3 prepends them to the first user turn).
    #[arg(long)]
    pub system: Option<String>,
    /// Context length in tokens (default: the model's maximum). Smaller saves KV-cache memory;
    /// when a conversation outgrows it, the oldest exchanges are dropped.
    #[arg(long)]
    pub ctx_size: Option<usize>,
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

/// The text that closes a reply: the model's own stop token is sampled but never fed back.
const CLOSE_REPLY: &str = "<end_of_turn>\n";

/// One finished exchange: what the user wrote, and the reply tokens the model was fed.
#[derive(Debug, Clone)]
struct Exchange {
    user: String,
    reply: Vec<u32>,
}

/// A conversation and the token sequence its session's KV cache holds.
pub struct Conversation {
    system: Option<String>,
    exchanges: Vec<Exchange>,
    /// Exactly the tokens in the session's KV cache, in order (`session.pos == fed.len()`).
    fed: Vec<u32>,
    /// Most positions the session may hold.
    ctx_limit: usize,
}

/// What the next turn will feed, decided before anything changes.
#[derive(Debug, Clone)]
pub struct TurnPlan {
    /// The oldest exchanges dropped to make room (then the session restarts from position 0).
    pub dropped: usize,
    /// The session is cleared and `prompt` is the whole remaining conversation.
    pub restart: bool,
    /// Tokens to prefill this turn.
    pub prompt: Vec<u32>,
    /// Most reply tokens that fit after `prompt` (leaving room to close the reply).
    pub max_reply: usize,
}

/// How a turn went.
#[derive(Debug)]
pub struct TurnReport {
    /// Old exchanges dropped to make room.
    pub dropped: usize,
    /// Tokens prefilled this turn.
    pub prefilled: usize,
    pub generation: Generation,
    /// The reply stopped because the context is full.
    pub context_full: bool,
}

impl Conversation {
    pub fn new(system: Option<String>, ctx_limit: usize) -> Self {
        Conversation {
            system: system.filter(|s| !s.trim().is_empty()),
            exchanges: Vec::new(),
            fed: Vec::new(),
            ctx_limit,
        }
    }

    pub fn fed(&self) -> &[u32] {
        &self.fed
    }

    pub fn exchanges(&self) -> usize {
        self.exchanges.len()
    }

    /// Forgets the conversation (the system prompt stays).
    pub fn reset<B: Backend>(&mut self, model: &Gemma3<B>, session: &mut Session<B>) {
        self.exchanges.clear();
        self.fed.clear();
        *session = model.new_session();
    }

    /// Tokens of a user turn: the first one starts the sequence (`<bos>`, system prompt); a
    /// later one first closes the previous reply.
    fn user_tokens(&self, tok: &Tokenizer, user: &str, first: bool) -> Result<Vec<u32>> {
        let turn = [Turn {
            role: Role::User,
            text: user.to_string(),
        }];
        Ok(if first {
            tok.encode(&chat::render(self.system.as_deref(), &turn), true)?
        } else {
            tok.encode(
                &format!("{CLOSE_REPLY}{}", chat::render(None, &turn)),
                false,
            )?
        })
    }

    /// The conversation from exchange `from` on, as a fresh token sequence.
    fn history_tokens(&self, tok: &Tokenizer, from: usize) -> Result<Vec<u32>> {
        let mut ids = Vec::new();
        for (i, e) in self.exchanges[from..].iter().enumerate() {
            ids.extend(self.user_tokens(tok, &e.user, i == 0)?);
            ids.extend(&e.reply);
        }
        Ok(ids)
    }

    /// Decides what the next turn feeds. `want_reply` is the reply room to keep free (the
    /// `--max-tokens`); when the context cannot keep that much, the oldest exchanges go, and
    /// when even the new turn alone leaves no room, it is an error and nothing changes.
    pub fn plan(&self, tok: &Tokenizer, user: &str, want_reply: usize) -> Result<TurnPlan> {
        let close = tok.encode(CLOSE_REPLY, false)?.len();
        // Keep at least this much room for a reply, even when --max-tokens asks for more.
        let want = want_reply.min(self.ctx_limit / 2).max(1) + close;
        let next = self.user_tokens(tok, user, self.fed.is_empty())?;
        if self.fed.len() + next.len() + want <= self.ctx_limit {
            return Ok(TurnPlan {
                dropped: 0,
                restart: false,
                max_reply: self.ctx_limit - self.fed.len() - next.len() - close,
                prompt: next,
            });
        }
        // Drop the oldest exchanges until the rest, the new turn and the reply room fit.
        for from in 1..=self.exchanges.len() {
            let mut ids = self.history_tokens(tok, from)?;
            ids.extend(self.user_tokens(tok, user, ids.is_empty())?);
            if ids.len() + want <= self.ctx_limit {
                return Ok(TurnPlan {
                    dropped: from,
                    restart: true,
                    max_reply: self.ctx_limit - ids.len() - close,
                    prompt: ids,
                });
            }
        }
        let alone = self.user_tokens(tok, user, true)?;
        bail!(
            "this message is {} tokens with the chat template{}; the context holds {} and a reply \
             needs room too: shorten it{}",
            alone.len(),
            if self.system.is_some() {
                " and the system prompt"
            } else {
                ""
            },
            self.ctx_limit,
            if self.ctx_limit < usize::MAX / 2 {
                " or raise --ctx-size"
            } else {
                ""
            }
        )
    }

    /// Runs one turn: plans it, feeds only the new tokens (or the shortened conversation after
    /// dropping old exchanges), and streams the reply through `on_text`. (The REPL calls
    /// [`Conversation::plan`] and [`Conversation::run_plan`] itself, to announce a drop first.)
    #[cfg(test)]
    #[allow(clippy::too_many_arguments)]
    pub fn turn<B: Backend>(
        &mut self,
        model: &Gemma3<B>,
        session: &mut Session<B>,
        tok: &Tokenizer,
        user: &str,
        opts: &GenerateOptions,
        on_text: impl FnMut(&str),
        interrupted: &dyn Fn() -> bool,
    ) -> Result<TurnReport> {
        debug_assert_eq!(session.pos, self.fed.len());
        let plan = self.plan(tok, user, opts.max_tokens)?;
        self.run_plan(model, session, tok, user, plan, opts, on_text, interrupted)
    }

    /// Carries out a [`TurnPlan`] from [`Conversation::plan`].
    #[allow(clippy::too_many_arguments)]
    pub fn run_plan<B: Backend>(
        &mut self,
        model: &Gemma3<B>,
        session: &mut Session<B>,
        tok: &Tokenizer,
        user: &str,
        plan: TurnPlan,
        opts: &GenerateOptions,
        on_text: impl FnMut(&str),
        interrupted: &dyn Fn() -> bool,
    ) -> Result<TurnReport> {
        if plan.restart {
            self.exchanges.drain(..plan.dropped);
            self.fed.clear();
            *session = model.new_session();
        }
        let mut opts = opts.clone();
        let capped = plan.max_reply < opts.max_tokens;
        opts.max_tokens = opts.max_tokens.min(plan.max_reply);
        let before = session.pos;
        let g = generate(
            model,
            session,
            tok,
            &plan.prompt,
            &opts,
            on_text,
            interrupted,
        );
        let g = match g {
            Ok(g) => g,
            Err(e) => {
                // A failed forward leaves the cache in an unknown state: start over, clean.
                self.exchanges.clear();
                self.fed.clear();
                *session = model.new_session();
                return Err(e.context("the conversation was reset"));
            }
        };
        // The cache now holds the prompt and every generated token that was fed back (a stop
        // token, or the token that completed a stop string, is sampled but not fed).
        self.fed.extend(&plan.prompt);
        let reply_fed = session.pos - before - plan.prompt.len();
        let reply = g.generated_ids[..reply_fed].to_vec();
        self.fed.extend(&reply);
        debug_assert_eq!(session.pos, self.fed.len());
        self.exchanges.push(Exchange {
            user: user.to_string(),
            reply,
        });
        let context_full = g.stop == StopReason::ContextFull
            || (capped
                && g.stop == StopReason::MaxTokens
                && g.generated_ids.len() >= opts.max_tokens);
        Ok(TurnReport {
            dropped: plan.dropped,
            prefilled: plan.prompt.len(),
            generation: g,
            context_full,
        })
    }
}

pub fn run(a: ChatArgs) -> Result<()> {
    let model = a.model.clone();
    with_model(&model, a)
}

impl ModelTask for ChatArgs {
    fn run<B: Backend>(self, l: Loaded<B>) -> Result<()> {
        let (model, tok) = (&l.model, &l.tokenizer);
        let max_pos = model.config.max_position_embeddings;
        let ctx_limit = self.ctx_size.unwrap_or(max_pos).min(max_pos);
        if ctx_limit < 16 {
            bail!("--ctx-size {ctx_limit} is too small for a conversation");
        }
        let (opts, _seed) = self.sampling.options(&model.config.eos_token_ids);
        let mut conv = Conversation::new(self.system.clone(), ctx_limit);
        let mut session = model.new_session();
        eprintln!(
            "mixq-run chat: {} on {} (loaded in {:.2}s, context {} tokens)\n\
             Type a message. /reset starts over, /exit or Ctrl-D quits; Ctrl-C stops a reply.",
            l.store.describe(),
            model.backend_describe(),
            l.load_time.as_secs_f64(),
            ctx_limit
        );
        interrupt::install();
        let stdin = std::io::stdin();
        let mut line = String::new();
        loop {
            print!("> ");
            std::io::stdout().flush()?;
            line.clear();
            if stdin.lock().read_line(&mut line)? == 0 {
                println!();
                break; // Ctrl-D
            }
            let text = line.trim();
            match text {
                "" => continue,
                "/exit" | "/quit" => break,
                "/reset" => {
                    let n = conv.exchanges();
                    conv.reset(model, &mut session);
                    eprintln!("[conversation cleared: {n} exchange(s) forgotten]");
                    continue;
                }
                "/help" => {
                    eprintln!("/reset starts over, /exit quits; Ctrl-C stops a reply, Ctrl-C or Ctrl-D at the prompt quits");
                    continue;
                }
                _ => {}
            }
            let plan = match conv.plan(tok, text, opts.max_tokens) {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("[{e:#}]");
                    continue;
                }
            };
            if plan.restart {
                eprintln!(
                    "[context full: dropped the oldest {} exchange(s), re-reading the remaining {} tokens]",
                    plan.dropped,
                    plan.prompt.len()
                );
            }
            interrupt::replying(true);
            let r = conv.run_plan(
                model,
                &mut session,
                tok,
                text,
                plan,
                &opts,
                |piece| {
                    print!("{piece}");
                    let _ = std::io::stdout().flush();
                },
                &interrupt::requested,
            );
            interrupt::replying(false);
            println!();
            match r {
                Ok(rep) => {
                    let g = &rep.generation;
                    let n = g.generated_ids.len();
                    let tps = if n > 1 {
                        (n - 1) as f64 / g.decode_time.as_secs_f64()
                    } else {
                        0.0
                    };
                    eprintln!(
                        "[{} tokens read in {:.2}s{} | {} generated, {:.1} tok/s | context {}/{}{}]",
                        rep.prefilled,
                        g.prefill_time.as_secs_f64(),
                        if rep.dropped > 0 { " (history re-read)" } else { "" },
                        n,
                        tps,
                        conv.fed().len(),
                        ctx_limit,
                        if g.stop == StopReason::Interrupted { " | stopped" } else { "" }
                    );
                    if rep.context_full {
                        eprintln!("[context full: the reply was cut; your next message drops the oldest exchanges (or /reset)]");
                    }
                }
                Err(e) => eprintln!("[error: {e:#}]"),
            }
        }
        Ok(())
    }
}

/// Ctrl-C: stops a streaming reply; at the prompt it ends the program (nothing is lost there).
mod interrupt {
    use super::*;

    static REPLYING: AtomicBool = AtomicBool::new(false);
    static REQUESTED: AtomicBool = AtomicBool::new(false);

    pub fn replying(on: bool) {
        REQUESTED.store(false, Ordering::SeqCst);
        REPLYING.store(on, Ordering::SeqCst);
    }

    pub fn requested() -> bool {
        REQUESTED.load(Ordering::SeqCst)
    }

    #[cfg(unix)]
    extern "C" fn on_sigint(_: libc::c_int) {
        if REPLYING.load(Ordering::SeqCst) {
            REQUESTED.store(true, Ordering::SeqCst);
        } else {
            // Only async-signal-safe calls here: write(2) and _exit(2).
            // SAFETY: a static buffer and the process's own stdout.
            unsafe {
                libc::write(1, b"\n".as_ptr().cast(), 1);
                libc::_exit(130);
            }
        }
    }

    #[cfg(unix)]
    pub fn install() {
        // SAFETY: installs a handler that touches only atomics and async-signal-safe calls.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_sigint as extern "C" fn(libc::c_int) as libc::sighandler_t;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(libc::SIGINT, &sa, std::ptr::null_mut());
        }
    }

    #[cfg(not(unix))]
    pub fn install() {}
}

#[cfg(test)]
mod tests;
