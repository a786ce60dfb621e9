"""What each job does with the engine's answers: QA and chat, and (later) the captioning modes."""
