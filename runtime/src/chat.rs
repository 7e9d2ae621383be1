//! Gemma 3's chat template. Gemma has no system role: a system prompt is prepended to the
//! first user turn, as the official template does.

/// `<end_of_turn>`: the model ends a reply with it.
pub const END_OF_TURN: u32 = 106;
/// `<eos>`.
pub const EOS: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    User,
    Model,
}

#[derive(Debug, Clone)]
pub struct Turn {
    pub role: Role,
    pub text: String,
}

/// Renders a conversation (without `<bos>`, which the tokenizer adds) and, when the last turn is
/// the user's, opens the model's turn so generation continues as the reply.
pub fn render(system: Option<&str>, turns: &[Turn]) -> String {
    let mut out = String::new();
    for (i, t) in turns.iter().enumerate() {
        let role = match t.role {
            Role::User => "user",
            Role::Model => "model",
        };
        out.push_str("<start_of_turn>");
        out.push_str(role);
        out.push('\n');
        if i == 0 && t.role == Role::User {
            if let Some(s) = system.filter(|s| !s.trim().is_empty()) {
                out.push_str(s.trim());
                out.push_str("\n\n");
            }
        }
        out.push_str(t.text.trim());
        out.push_str("<end_of_turn>\n");
    }
    if turns.last().is_some_and(|t| t.role == Role::User) {
        out.push_str("<start_of_turn>model\n");
    }
    out
}

/// Whether `token` ends a chat reply.
pub fn is_stop(token: u32) -> bool {
    token == EOS || token == END_OF_TURN
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_user_turn_opens_the_model_turn() {
        let t = [Turn {
            role: Role::User,
            text: "Hi there".into(),
        }];
        assert_eq!(
            render(None, &t),
            "<start_of_turn>user\nHi there<end_of_turn>\n<start_of_turn>model\n"
        );
    }

    #[test]
    fn system_prompt_joins_the_first_user_turn_and_history_is_kept() {
        let t = [
            Turn {
                role: Role::User,
                text: "Hello".into(),
            },
            Turn {
                role: Role::Model,
                text: "Hi!".into(),
            },
            Turn {
                role: Role::User,
                text: "Name a colour.".into(),
            },
        ];
        assert_eq!(
            render(Some("Be brief."), &t),
            "<start_of_turn>user\nBe brief.\n\nHello<end_of_turn>\n<start_of_turn>model\nHi!<end_of_turn>\n\
             <start_of_turn>user\nName a colour.<end_of_turn>\n<start_of_turn>model\n"
        );
    }

    #[test]
    fn stops_on_eos_and_end_of_turn() {
        assert!(is_stop(1) && is_stop(106) && !is_stop(2));
    }
}
