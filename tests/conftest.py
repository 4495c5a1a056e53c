"""Shared pytest setup: float64-free CPU runs, hypothesis profile, markers."""

import os

# XLA:CPU's backend optimization level 0: the suite is compile-bound (hundreds of small
# programs), and level 0 compiles them about 30% faster (measured on test_sampling.py and
# test_remask.py: 45 s against 66 s) for the same results.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8 "
                      "--xla_backend_optimization_level=0")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import hypothesis  # noqa: E402

hypothesis.settings.register_profile(
    "ci", max_examples=25, deadline=None, derandomize=True,
    suppress_health_check=[hypothesis.HealthCheck.too_slow])
hypothesis.settings.load_profile("ci")


# The default run's budget (README: under 6 minutes on 2 CPU cores). These tests take
# 8-60 s each; each feature they exercise keeps a cheaper test in the default run
# (named after the '#'), and ``pytest -m slow`` runs them all.
SLOW_BY_BUDGET = (
    "test_end_to_end.py::test_binaries_train_evaluate_sample",      # test_cli, test_readme
    "test_end_to_end.py::test_finetune_and_distill_binaries",       # test_posttrain, test_targets
    "test_end_to_end.py::test_markov_bound_stays_above",            # test_likelihood (exact)
    "test_posttrain.py::test_finetune_runs_checkpoint_and_reload",  # reward tests (exact)
    "test_losses.py::test_losses_finite_for_all_shapes",            # test_precision
    "test_multihost.py::",                                          # test_workdir_safety 8->1
    "test_targets.py::test_distillation_and_mlm_teacher_train",     # oracle-teacher test
    "test_targets.py::test_taylor_is_exact_for_a_teacher_linear",   # top_k == exact test
    "test_targets.py::test_soft_one_hot_input_matches_token_input",
    "test_training.py::test_sigterm_checkpoints_and_resumes_exactly",  # exact resume
    "test_training.py::test_loss_falls_on_bundled_corpus",          # test_readme main job
    "test_training.py::test_eight_device_step_equals_single",       # 8 -> 1 restore
    "test_reliability.py::test_killed_worker",                      # launcher output test
    "test_reliability.py::test_sigkill_during_async_saves",         # flipped-bytes fallback
    "test_reliability.py::test_prepare_data_sentencepiece",         # ..._one_line_corpus
    "test_reliability.py::test_full_then_read_only_tmpfs",          # disks_that_say_no,
                                                                    # refused_for_space
    "test_lock.py::test_two_trainers_on_one_workdir",               # ..._live_holder_refuses
    "test_losses.py::test_chunked_loss_equals_plain_loss_every_form",  # ..._plain_loss
    "test_compile_cache.py::test_second_start_of_the_main_job",  # ..._loads_from_the_cache
    "test_scale_plan.py::test_compiled_step_memory_and_collectives",  # collective_bytes,
                                                                    # local_bytes tests
    "test_models.py::test_scan_over_layers",                        # shapes/attention tests
    "test_loader_prefetch.py::test_trainer_batches_identical",      # ..._equal_unprefetched
    "test_workdir_safety.py::test_padded_prepared_data",            # test_prepared padding
    "test_workdir_safety.py::test_consecutive_skipped_steps",       # diverging resume
    "test_workdir_safety.py::test_profile_steps",
    "test_workdir_safety.py::test_train_on_one_device_resume_on_eight",  # 8 -> 1 restore
    "test_targets.py::test_oracle_teacher_target_has_the_data_target",  # exact ratios
    "test_targets.py::test_top_k_tail_through_the_causal_adapter",  # top_k_tail table tests
    "test_ratio_param.py::test_parameterizations_train_checkpoint_and_reload",  # ..._without_a_trained_reference
    "test_hamming.py::test_hamming_two_trains_through_the_trainer",  # ..._loss_through_the_experiment
    "test_ratio_param.py::test_parameterizations_without_a_trained_reference[explicit",  # exact head tests
    "test_workdir_safety.py::test_resume_with_changed_model_refuses",  # ..._changes_classify_keys
    "test_models.py::test_rows_are_independent_and_the_row_cache_is_exact",  # test_sampling cache
    "test_sampling.py::test_reverse_chain_reproduces_forward_marginals[absorbing-euler]",
    "test_sampling.py::test_true_score_sampler_recovers_data_distribution[uniform-euler-512]",
    "test_sampling.py::test_true_score_sampler_recovers_data_distribution[absorbing-euler-256]",
    "test_sampling.py::test_reverse_chain_reproduces_forward_marginals[uniform-euler]",
    "test_sampling.py::test_reverse_chain_reproduces_forward_marginals[uniform-analytic]",
    "test_draws.py::test_start_state_at_the_default_schedule",  # ..._does_not_seed_random_tokens
    "test_sampling.py::test_ancestral_cache_skips_network_and_matches_analytic",  # clamped[absorbing-ancestral], true_score[absorbing-ancestral-64]
    "test_sampling.py::test_true_score_sampler_recovers_data_distribution[absorbing-analytic-32]",  # test_guidance (sampler law by enumeration), test_remask
    "test_notebooks.py::test_notebook_quick",  # test_executed_notebook_matches_its_source (the committed executed copies)
    "test_remask.py::test_remasking_with_the_bayes_denoiser_keeps_the_data_law[rescale",  # [cap
    "test_remask.py::test_remasking_with_the_bayes_denoiser_keeps_the_data_law[loop",
    "test_bf16_sampling.py::test_bf16_network_samples_the_float32_law",  # ..._float32_denoiser
    "test_prepared.py::test_training_on_a_rotted_shard_is_one_error_line",  # ..._bit_rot_...
    "test_pins.py::test_reference_on_other_data_or_vocabulary_is_refused",  # ..._names_what_differs
    "test_pins.py::test_reference_is_pinned_and_a_changed_one_refused",  # test_check_unchanged_...
    "test_steps.py::test_samplers_draw_what_they_drew_before_bit_for_bit",  # test_some_samplers_...
    "test_draws.py::test_nan_and_all_minus_inf_rows_are_an_error[50257]",  # [27], [64]
    "test_cli.py::test_bad_flag_rows_as_real_commands",  # test_bad_flag_value_is_one_line_naming_the_flag (the same rows, in one process)
    "test_prepared.py::test_train_stops_on_rot_that_keeps_ids_in_range",  # test_block_checksums_catch_rot_that_keeps_ids_in_range
    "test_prepared.py::test_train_and_evaluate_stop_on_rot_that_keeps_ids_in_range",  # the same
    "test_prepared.py::test_prepare_reads_a_file_without_newlines_in_bounded_memory",  # test_long_documents_are_tokenized_in_pieces_to_the_same_ids
    "test_path_safety.py::test_train_refuses_a_workdir_whose_files_link_outside[config.json]",  # [metrics.jsonl], test_writes_do_not_follow_symlinks_out_of_a_confined_directory
    "test_path_safety.py::test_train_refuses_a_workdir_whose_files_link_outside[samples]",
    "test_pretrained.py::test_binaries_on_converted_workdir",  # test_converted_mdlm_restores,
                                                                # test_cli, test_end_to_end
    "test_pretrained.py::test_converted_sedd_duo_restore_sample_and_evaluate",  # fixture logits
                                                                # tests, ..._mdlm_restores
    "test_pretrained.py::test_convert_binary_every_flag_error",  # ..._one_line_error,
                                                                # ..._refuses_bad_input_...
    "test_pretrained.py::test_bfloat16_activations_stay_close",  # fixture logits tests
    "test_pretrained.py::test_gpt2_teacher_and_judge_on_a_converted_mdlm",  # test_gpt2_teacher,
                                                                # test_gen_ppl, ..._mdlm_restores
    "test_end_to_end.py::test_distill_from_an_hf_gpt2_teacher",  # test_gpt2_teacher (loader, exact targets)
    "test_splash.py::test_splash_equals_xla_attention_values_and_gradients[True",  # [False-32]
    "test_vocab_tiling.py::test_tiled_loss_equals_plain_loss_every_kind_and_process",  # ..._plain_loss
    "test_scale_plan.py::test_tpu_plan_",   # (libtpu) test_replica_groups_..., test_hybrid_mesh_...,
                                            # test_splash.py::test_tpu_program_holds_...
    "test_tpu_sample_plan.py::test_sampler_compiled_for_v5e",  # (libtpu) ..._tpu_style_program
    "test_ablations.py::test_every_ablation_row_on_the_cpu",   # ..._rows_run_on_the_cpu
    "test_vocab_tiling.py::test_train_binary_refuses_tiling",  # test_config_tile_vocab_needs_chunks
)


def pytest_collection_modifyitems(config, items):  # noqa: D103
  import pytest  # pylint: disable=g-import-not-at-top
  for item in items:
    nodeid = item.nodeid.split("tests/", 1)[-1]
    if any(nodeid.startswith(p) for p in SLOW_BY_BUDGET):
      item.add_marker(pytest.mark.slow)
